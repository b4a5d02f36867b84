// draft_cumprod's kernels compiled by the host compiler with the CPU emulator, from the same text
// as kernel.cu (registered as tetris_emu::draft_cumprod).
#include "emulator/emulator.h"  // first: what kernel text needs of CUDA
#include "ops/draft_cumprod/kernel.cuh"

void tetris::launch_draft_cumprod_emulated(const DraftCumprodParams& params, void* stream) {
  emu::launch_draft_cumprod(params, stream);
}
