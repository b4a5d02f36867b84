// The tree_mask kernels for the CPU emulation harness (the same kernel text as kernel.cu).
#include "emulator/emulator.h"

#include "ops/tree_mask/kernel.cuh"
