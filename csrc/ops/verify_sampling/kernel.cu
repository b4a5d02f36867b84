// verify_sampling's kernels compiled by nvcc for the GPU (no torch headers, so this compiles fast).
#include "ops/verify_sampling/kernel.cuh"

void tetris::launch_verify_sampling_cuda(const VerifySamplingParams& params, void* stream) {
  cuda::launch_verify_sampling(params, stream);
}
