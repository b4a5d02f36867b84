// The verify_sampling kernel for the CPU emulation harness (the same kernel text as kernel.cu).
#include "emulator/emulator.h"

#include "ops/verify_sampling/kernel.cuh"
