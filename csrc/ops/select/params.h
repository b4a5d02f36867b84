// select on a device: the kernel params that device_launcher.h fills and kernel.cuh reads,
// and the two backend launchers (host-includable, no device code).
#pragma once

#include <cstdint>

#include "host_device/index_matrix.h"

namespace tetris {

struct SelectParams {
  const float* scores = nullptr;  // [B, N], any strides (in elements)
  int64_t batch = 0;              // B
  int64_t candidates = 0;         // N
  int64_t scores_stride[2] = {0, 0};
  IndexMatrix parents;   // [B, N], or absent for chains (parent of n is n - 1)
  IndexMatrix caps;      // max_per_request [B], or absent (no per-request cap)
  uint32_t min_key = 0;  // smallest eligible score key (select_min_eligible_key)
  int64_t budget = 0;
  // Outputs, contiguous: selected [B, N], counts [B].
  bool* selected = nullptr;
  int32_t* counts = nullptr;
  // Workspace of select_workspace_words(B, N) 32-bit words, used when the keys do not fit in
  // shared memory.
  uint32_t* workspace = nullptr;
};

inline int64_t select_workspace_words(int64_t B, int64_t N) { return 2 * B * N; }

// One launch on `stream` (a single block). Requires 0 < B * N < 2^31.
void launch_select_cuda(const SelectParams& params, void* stream);      // kernel.cu (nvcc)
void launch_select_emulated(const SelectParams& params, void* stream);  // kernel_emulated.cpp

}  // namespace tetris
