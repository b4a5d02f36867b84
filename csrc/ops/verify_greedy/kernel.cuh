// verify_greedy kernel, written once for CUDA and the CPU emulation harness. Semantics:
// docs/ops.md; the CPU twin: csrc/ops/verify_greedy/cpu.cpp. One block per request walks its
// verification block (verify_walk/kernel_walk.cuh); the token comparison is part of the parallel
// search for the next child, so every step of the walk is one block-wide min.
#pragma once

#include "kernel_common/backend.cuh"
#include "ops/verify_greedy/params.h"
#include "verify_walk/kernel_walk.cuh"

namespace tetris::TETRIS_KERNEL_NS {
namespace verify_greedy_kernels {

constexpr unsigned kMaxThreads = 256;

// Accept, from the root, the first child whose token is the target's greedy choice.
class GreedyWalker {
 public:
  __device__ GreedyWalker(const VerifyGreedyParams& p, int64_t b) : p_(p), b_(b) {}
  __device__ void enter(int64_t slot) { want_ = p_.target_tokens(b_, slot); }
  __device__ bool offer(int64_t /*slot*/, int64_t child) const {
    return p_.slot_tokens(b_, child) == want_;
  }
  __device__ bool try_child(int64_t, int64_t) const { return true; }  // offer() decided
  __device__ int64_t bonus(int64_t /*slot*/) const { return want_; }

 private:
  const VerifyGreedyParams& p_;
  int64_t b_;
  int64_t want_ = 0;  // the target's token after the current slot
};

}  // namespace verify_greedy_kernels

// The launcher, compiled once per backend: kernel.cu wraps it as launch_verify_greedy_cuda,
// kernel_emulated.cpp as launch_verify_greedy_emulated (both declared in params.h).
inline void launch_verify_greedy(const VerifyGreedyParams& params, void* stream) {
  namespace k = verify_greedy_kernels;
  // A thread per later slot in the search for the next child.
  verify_walk::launch_walk<k::GreedyWalker, k::kMaxThreads>(params, params.slots, stream);
}

}  // namespace tetris::TETRIS_KERNEL_NS
