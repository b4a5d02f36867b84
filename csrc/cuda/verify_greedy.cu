// The verify_greedy kernel for the GPU (nvcc; no torch headers).
#include "kernels/verify_greedy.cuh"
