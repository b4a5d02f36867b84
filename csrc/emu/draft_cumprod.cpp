// The draft_cumprod kernels on the CPU, through the emulation harness (registered as tetris_emu::draft_cumprod).
#include "emu/emu.h"
// The harness must come first.
#include "kernels/draft_cumprod.cuh"
