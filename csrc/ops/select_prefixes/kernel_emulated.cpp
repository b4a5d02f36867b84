// The select_prefixes kernel on the CPU, through the emulation harness
// (registered as tetris_emu::select_prefixes).
#include "emulator/emulator.h"
// The harness must come first.
#include "ops/select_prefixes/kernel.cuh"
