// The verify_greedy kernel for the CPU emulation harness (the same kernel text as csrc/cuda/).
#include "emu/emu.h"

#include "kernels/verify_greedy.cuh"
