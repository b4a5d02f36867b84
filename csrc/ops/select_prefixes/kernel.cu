// The select_prefixes kernel for the GPU (nvcc; no torch headers, so this compiles fast).
#include "ops/select_prefixes/kernel.cuh"
