// select_prefixes's kernels compiled by nvcc for the GPU (no torch headers, so this compiles fast).
#include "ops/select_prefixes/kernel.cuh"

void tetris::launch_select_prefixes_cuda(const SelectPrefixesParams& params, void* stream) {
  cuda::launch_select_prefixes(params, stream);
}
