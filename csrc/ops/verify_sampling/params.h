// verify_sampling on a device: the kernel params that device_launcher.h fills and kernel.cuh
// reads, and the two backend launchers (host-includable, no device code).
#pragma once

#include <cstdint>

#include "verify_walk/walk_params.h"

namespace tetris {

// The walk's slots and outputs (VerifyWalkParams), and the distributions.
struct VerifySamplingParams : VerifyWalkParams {
  int64_t vocab = 0;  // V >= 1

  // Inputs, read with their own strides (in elements).
  const float* target_probs = nullptr;  // [B, M, V]
  int64_t target_stride[3] = {0, 0, 0};
  const float* draft_probs = nullptr;  // [B, M, V], or nullptr: deterministic children
  int64_t draft_stride[3] = {0, 0, 0};
  const float* uniforms = nullptr;  // [B, M]
  int64_t uniforms_stride[2] = {0, 0};

  // Scratch [B, V], contiguous: the working distribution of each request once a rejection has
  // changed it (the kernel never writes the inputs).
  float* scratch = nullptr;
};

// Launches nothing when B = 0.
void launch_verify_sampling_cuda(const VerifySamplingParams& params,
                                 void* stream);  // kernel.cu (nvcc)
void launch_verify_sampling_emulated(const VerifySamplingParams& params,
                                     void* stream);  // kernel_emulated.cpp

}  // namespace tetris
