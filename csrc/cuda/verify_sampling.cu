// The verify_sampling kernel for the GPU (nvcc; no torch headers).
#include "kernels/verify_sampling.cuh"
