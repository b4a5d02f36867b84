// The tree_mask kernels for the GPU (nvcc; no torch headers).
#include "kernels/tree_mask.cuh"
