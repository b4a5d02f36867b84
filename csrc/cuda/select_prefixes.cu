// The select_prefixes kernel for the GPU (nvcc; no torch headers, so this compiles fast).
#include "kernels/select_prefixes.cuh"
