// verify_greedy on a device: what the torch-facing launcher (csrc/ops/verify_greedy/device_launcher.cpp)
// hands to the kernel (csrc/ops/verify_greedy/kernel.cuh). Host-includable: no device code.
#pragma once

#include <cstdint>

#include "host_device/index_matrix.h"

namespace tetris {

struct VerifyGreedyParams {
  int64_t batch = 0;  // B
  int64_t slots = 0;  // M >= 1 (slot 0 is the root)

  // Inputs [B, M], read with their own strides.
  IndexMatrix slot_tokens, slot_parent, target_tokens;

  // Outputs, contiguous: accepted_slots [B, M], num_accepted [B], out_tokens [B, M].
  int64_t* accepted_slots = nullptr;
  int32_t* num_accepted = nullptr;
  int64_t* out_tokens = nullptr;
};

// Launches nothing when B = 0.
void launch_verify_greedy_cuda(const VerifyGreedyParams& params, void* stream);      // kernel.cu (nvcc)
void launch_verify_greedy_emulated(const VerifyGreedyParams& params, void* stream);  // kernel_emulated.cpp

}  // namespace tetris
