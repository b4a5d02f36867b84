// tree_mask and tree_mask_packed on a device: the kernel params that device_launcher.h fills and
// kernel.cuh reads, and the two backend launchers (host-includable, no device code).
#pragma once

#include <cstdint>

#include "host_device/index_matrix.h"

namespace tetris {

// One verification block of M = candidates + 1 slots per request (docs/ops.md).
struct TreeMaskParams {
  int64_t batch = 0;       // B
  int64_t candidates = 0;  // N

  // Inputs, read with their own strides (in elements).
  const bool* selected = nullptr;  // [B, N]
  int64_t selected_stride[2] = {0, 0};
  IndexMatrix parents;      // [B, N]; not present: chains (the parent of n is n - 1)
  IndexMatrix prefix_lens;  // [B]

  // Outputs, contiguous. slot_index and slot_parent [B, M] are always written (tree_mask_packed
  // passes scratch buffers: the mask rows are built from slot_parent).
  int64_t* slot_index = nullptr;
  int64_t* slot_parent = nullptr;
  int64_t* positions = nullptr;    // [B, M]; tree_mask only, else nullptr
  bool* mask = nullptr;            // [B, M, M]; tree_mask only, else nullptr
  int32_t* cu_seqlens = nullptr;   // [B + 1]; tree_mask_packed only, else nullptr
  uint8_t* packed_mask = nullptr;  // [B, M, ceil(M / 8)]; tree_mask_packed only, else nullptr
};

// Both launch nothing when B = 0 (N = 0 still has the root slot, so it does launch).
void launch_tree_mask_cuda(const TreeMaskParams& params, void* stream);      // kernel.cu (nvcc)
void launch_tree_mask_emulated(const TreeMaskParams& params, void* stream);  // kernel_emulated.cpp
void launch_tree_mask_packed_cuda(const TreeMaskParams& params, void* stream);  // kernel.cu (nvcc)
void launch_tree_mask_packed_emulated(const TreeMaskParams& params,
                                      void* stream);  // kernel_emulated.cpp

}  // namespace tetris
