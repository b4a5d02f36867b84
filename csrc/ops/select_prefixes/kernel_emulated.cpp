// select_prefixes's kernels compiled by the host compiler with the CPU emulator, from the same text
// as kernel.cu (registered as tetris_emu::select_prefixes).
#include "emulator/emulator.h"  // first: what kernel text needs of CUDA
#include "ops/select_prefixes/kernel.cuh"

void tetris::launch_select_prefixes_emulated(const SelectPrefixesParams& params, void* stream) {
  emu::launch_select_prefixes(params, stream);
}
