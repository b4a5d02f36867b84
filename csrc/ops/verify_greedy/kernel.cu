// verify_greedy's kernels compiled by nvcc for the GPU (no torch headers, so this compiles fast).
#include "ops/verify_greedy/kernel.cuh"

void tetris::launch_verify_greedy_cuda(const VerifyGreedyParams& params, void* stream) {
  cuda::launch_verify_greedy(params, stream);
}
