// select's kernels compiled by nvcc for the GPU (no torch headers, so this compiles fast).
#include "ops/select/kernel.cuh"

void tetris::launch_select_cuda(const SelectParams& params, void* stream) {
  cuda::launch_select(params, stream);
}
