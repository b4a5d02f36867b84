// The select_prefixes kernel on the CPU, through the emulation harness
// (registered as tetris_emu::select_prefixes).
#include "emu/emu.h"
// The harness must come first.
#include "kernels/select_prefixes.cuh"
