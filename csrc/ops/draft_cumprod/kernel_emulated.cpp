// The draft_cumprod kernels on the CPU, through the emulation harness (registered as tetris_emu::draft_cumprod).
#include "emulator/emulator.h"
// The harness must come first.
#include "ops/draft_cumprod/kernel.cuh"
