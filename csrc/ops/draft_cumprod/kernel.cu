// draft_cumprod's kernels compiled by nvcc for the GPU (no torch headers, so this compiles fast).
#include "ops/draft_cumprod/kernel.cuh"

void tetris::launch_draft_cumprod_cuda(const DraftCumprodParams& params, void* stream) {
  cuda::launch_draft_cumprod(params, stream);
}
