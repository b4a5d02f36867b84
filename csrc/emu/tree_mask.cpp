// The tree_mask kernels for the CPU emulation harness (the same kernel text as csrc/cuda/).
#include "emu/emu.h"

#include "kernels/tree_mask.cuh"
