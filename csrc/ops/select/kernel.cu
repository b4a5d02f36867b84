// The select kernels for the GPU (nvcc; no torch headers, so this compiles fast).
#include "ops/select/kernel.cuh"
