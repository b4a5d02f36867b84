// select_prefixes on a device: the kernel params that device_launcher.h fills and kernel.cuh
// reads, and the two backend launchers (host-includable, no device code).
#pragma once

#include <cstdint>

#include "host_device/index_matrix.h"

namespace tetris {

struct SelectPrefixesParams {
  const float* probs = nullptr;  // [R, S], any strides (in elements)
  int64_t prob_rows = 0;         // R
  int64_t positions = 0;         // S
  int64_t probs_stride[2] = {0, 0};
  IndexMatrix rows;   // [B]: the row of probs of each request (any value: checked per request)
  int64_t batch = 0;  // B
  int64_t budget = 0;
  // lengths [B], read (caps) and then written (selected prefix lengths) in place.
  void* lengths = nullptr;
  bool lengths_int64 = false;
  int64_t lengths_stride = 0;
  // Workspace of B * S 32-bit words, used when the keys do not fit in shared memory.
  uint32_t* workspace = nullptr;
};

// One launch on `stream` (a single block). Requires 0 < B * S < 2^31.
void launch_select_prefixes_cuda(const SelectPrefixesParams& params,
                                 void* stream);  // kernel.cu (nvcc)
void launch_select_prefixes_emulated(const SelectPrefixesParams& params,
                                     void* stream);  // kernel_emulated.cpp

}  // namespace tetris
