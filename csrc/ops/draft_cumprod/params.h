// draft_cumprod on a device: the kernel params that device_launcher.h fills and kernel.cuh reads,
// and the two backend launchers (host-includable, no device code).
#pragma once

#include <cstdint>

#include "host_device/index_matrix.h"

namespace tetris {

struct DraftCumprodParams {
  // logits [B, N, V], any strides (in elements).
  const void* logits = nullptr;
  FloatType logits_type = FloatType::kFloat32;
  int64_t batch = 0;       // B
  int64_t candidates = 0;  // N
  int64_t vocab = 0;       // V
  int64_t logits_stride[3] = {0, 0, 0};
  IndexMatrix tokens;   // [B, N]
  IndexMatrix parents;  // [B, N], or absent for chains (parent of n is n - 1)
  float inverse_temperature = 1.0f;
  // Outputs, contiguous [B, N] float32.
  float* token_logprobs = nullptr;
  float* cum_logprobs = nullptr;
  // Workspace of B * N bytes: whether each candidate's path from the root is valid.
  uint8_t* on_valid_path = nullptr;
};

// Two launches on `stream`: token log-probabilities (a block per row), then the sums along
// the paths (a thread per request). Requires B * N > 0.
void launch_draft_cumprod_cuda(const DraftCumprodParams& params, void* stream);  // kernel.cu (nvcc)
void launch_draft_cumprod_emulated(const DraftCumprodParams& params,
                                   void* stream);  // kernel_emulated.cpp

}  // namespace tetris
