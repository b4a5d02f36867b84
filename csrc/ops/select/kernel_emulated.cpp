// The select kernels on the CPU, through the emulation harness (registered as tetris_emu::select).
#include "emulator/emulator.h"
// The harness must come first.
#include "ops/select/kernel.cuh"
