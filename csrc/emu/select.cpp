// The select kernels on the CPU, through the emulation harness (registered as tetris_emu::select).
#include "emu/emu.h"
// The harness must come first.
#include "kernels/select.cuh"
