// The draft_cumprod kernels for the GPU (nvcc; no torch headers, so this compiles fast).
#include "ops/draft_cumprod/kernel.cuh"
