// The verify_greedy kernel for the GPU (nvcc; no torch headers).
#include "ops/verify_greedy/kernel.cuh"
