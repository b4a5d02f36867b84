// tree_mask's kernels compiled by the host compiler with the CPU emulator, from the same text
// as kernel.cu (registered as tetris_emu::tree_mask, tetris_emu::tree_mask_packed).
#include "emulator/emulator.h"  // first: what kernel text needs of CUDA
#include "ops/tree_mask/kernel.cuh"

void tetris::launch_tree_mask_emulated(const TreeMaskParams& params, void* stream) {
  emu::launch_tree_mask(params, stream);
}

void tetris::launch_tree_mask_packed_emulated(const TreeMaskParams& params, void* stream) {
  emu::launch_tree_mask_packed(params, stream);
}
