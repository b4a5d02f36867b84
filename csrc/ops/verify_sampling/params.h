// verify_sampling on a device: what the torch-facing launcher (csrc/ops/verify_sampling/device_launcher.cpp)
// hands to the kernel (csrc/ops/verify_sampling/kernel.cuh). Host-includable: no device code.
#pragma once

#include <cstdint>

#include "host_device/index_matrix.h"

namespace tetris {

struct VerifySamplingParams {
  int64_t batch = 0;  // B
  int64_t slots = 0;  // M >= 1 (slot 0 is the root)
  int64_t vocab = 0;  // V >= 1

  // Inputs, read with their own strides (in elements).
  IndexMatrix slot_tokens, slot_parent;  // [B, M]
  const float* target_probs = nullptr;  // [B, M, V]
  int64_t target_stride0 = 0, target_stride1 = 0, target_stride2 = 0;
  const float* draft_probs = nullptr;  // [B, M, V], or nullptr: deterministic children
  int64_t draft_stride0 = 0, draft_stride1 = 0, draft_stride2 = 0;
  const float* uniforms = nullptr;  // [B, M]
  int64_t uniforms_stride0 = 0, uniforms_stride1 = 0;

  // Scratch [B, V], contiguous: the working distribution of each request once a rejection has
  // changed it (the kernel never writes the inputs).
  float* scratch = nullptr;

  // Outputs, contiguous: accepted_slots [B, M], num_accepted [B], out_tokens [B, M].
  int64_t* accepted_slots = nullptr;
  int32_t* num_accepted = nullptr;
  int64_t* out_tokens = nullptr;
};

// Launches nothing when B = 0.
void launch_verify_sampling_cuda(const VerifySamplingParams& params, void* stream);      // kernel.cu (nvcc)
void launch_verify_sampling_emulated(const VerifySamplingParams& params, void* stream);  // kernel_emulated.cpp

}  // namespace tetris
