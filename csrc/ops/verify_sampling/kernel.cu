// The verify_sampling kernel for the GPU (nvcc; no torch headers).
#include "ops/verify_sampling/kernel.cuh"
