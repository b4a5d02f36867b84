// select's kernels compiled by the host compiler with the CPU emulator, from the same text
// as kernel.cu (registered as tetris_emu::select).
#include "emulator/emulator.h"  // first: what kernel text needs of CUDA
#include "ops/select/kernel.cuh"

void tetris::launch_select_emulated(const SelectParams& params, void* stream) {
  emu::launch_select(params, stream);
}
