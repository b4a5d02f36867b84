// The tree_mask kernels for the GPU (nvcc; no torch headers).
#include "ops/tree_mask/kernel.cuh"
