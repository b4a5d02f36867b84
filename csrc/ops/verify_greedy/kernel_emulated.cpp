// verify_greedy's kernels compiled by the host compiler with the CPU emulator, from the same text
// as kernel.cu (registered as tetris_emu::verify_greedy).
#include "emulator/emulator.h"  // first: what kernel text needs of CUDA
#include "ops/verify_greedy/kernel.cuh"

void tetris::launch_verify_greedy_emulated(const VerifyGreedyParams& params, void* stream) {
  emu::launch_verify_greedy(params, stream);
}
