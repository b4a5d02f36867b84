// verify_sampling's kernels compiled by the host compiler with the CPU emulator, from the same text
// as kernel.cu (registered as tetris_emu::verify_sampling).
#include "emulator/emulator.h"  // first: what kernel text needs of CUDA
#include "ops/verify_sampling/kernel.cuh"

void tetris::launch_verify_sampling_emulated(const VerifySamplingParams& params, void* stream) {
  emu::launch_verify_sampling(params, stream);
}
