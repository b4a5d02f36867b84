// verify_greedy on a device: the kernel params that device_launcher.h fills and kernel.cuh reads,
// and the two backend launchers (host-includable, no device code).
#pragma once

#include <cstdint>

#include "verify_walk/walk_params.h"

namespace tetris {

// The walk's slots and outputs (VerifyWalkParams), and the target's tokens.
struct VerifyGreedyParams : VerifyWalkParams {
  IndexMatrix target_tokens;  // [B, M], read with its own strides
};

// Launches nothing when B = 0.
void launch_verify_greedy_cuda(const VerifyGreedyParams& params, void* stream);  // kernel.cu (nvcc)
void launch_verify_greedy_emulated(const VerifyGreedyParams& params,
                                   void* stream);  // kernel_emulated.cpp

}  // namespace tetris
