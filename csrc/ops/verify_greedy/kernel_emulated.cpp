// The verify_greedy kernel for the CPU emulation harness (the same kernel text as kernel.cu).
#include "emulator/emulator.h"

#include "ops/verify_greedy/kernel.cuh"
