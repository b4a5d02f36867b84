// tree_mask's kernels compiled by nvcc for the GPU (no torch headers, so this compiles fast).
#include "ops/tree_mask/kernel.cuh"

void tetris::launch_tree_mask_cuda(const TreeMaskParams& params, void* stream) {
  cuda::launch_tree_mask(params, stream);
}

void tetris::launch_tree_mask_packed_cuda(const TreeMaskParams& params, void* stream) {
  cuda::launch_tree_mask_packed(params, stream);
}
