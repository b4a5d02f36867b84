// select_prefixes kernel (semantics: docs/ops.md; the CPU twin: csrc/ops/select_prefixes/cpu.cpp).
//
// One block handles the whole batch in one launch, in the CPU's steps:
//   1. score keys, a thread per request (csrc/ops/select_prefixes/prefix_keys.h, the CPU's code),
//   into shared
//      memory (global workspace when B * S is too large), and the number of kept positions;
//   2. when more are kept than the budget, the cut (radix_cut, as select): the budget-th largest
//      key T and how many keys equal to T fit;
//   3. lengths: each thread owns a contiguous range of requests; a block scan over the ties
//      (keys == T) of the ranges hands out the ties in request order, as on the CPU.
// The caps are read in step 1 and the lengths written in step 3, after block barriers.
#pragma once

#include <cstdint>

#include "kernel_common/primitives.cuh"
#include "kernel_common/radix_cut.cuh"
#include "ops/select_prefixes/params.h"
#include "ops/select_prefixes/prefix_keys.h"

namespace tetris::TETRIS_KERNEL_NS {

inline constexpr unsigned kSelectPrefixesThreads = 1024;
static_assert(kNotKept == kDropped);

__device__ __forceinline__ int64_t load_length(const SelectPrefixesParams& p, int64_t b) {
  const int64_t offset = b * p.lengths_stride;
  return p.lengths_int64 ? static_cast<const int64_t*>(p.lengths)[offset]
                         : static_cast<const int32_t*>(p.lengths)[offset];
}

__device__ __forceinline__ void store_length(const SelectPrefixesParams& p, int64_t b,
                                             int64_t value) {
  const int64_t offset = b * p.lengths_stride;
  if (p.lengths_int64) {
    static_cast<int64_t*>(p.lengths)[offset] = value;
  } else {
    static_cast<int32_t*>(p.lengths)[offset] = static_cast<int32_t>(value);
  }
}

__global__ void __launch_bounds__(kSelectPrefixesThreads)
    select_prefixes_kernel(SelectPrefixesParams p, bool keys_in_shared) {
  const int64_t B = p.batch, S = p.positions;
  const unsigned tid = threadIdx.x, threads = blockDim.x;
  uint32_t* key = keys_in_shared ? TETRIS_DYNAMIC_SMEM(uint32_t) : p.workspace;

  // 1. Keys.
  unsigned kept_here = 0;
  for (int64_t b = tid; b < B; b += threads) {
    const int64_t r = p.rows(b);
    const float* row = r >= 0 && r < p.prob_rows ? p.probs + r * p.probs_stride[0] : nullptr;
    kept_here += static_cast<unsigned>(
        prefix_keys(row, p.probs_stride[1], S, load_length(p, b), key + b * S));
  }
  const unsigned kept = block_all_reduce(kept_here, Sum{});  // also the barrier after step 1

  // 2. The cut.
  Cut cut{kDropped, 0};  // everything kept fits: every key above kDropped
  if (p.budget == 0) {
    cut = {kPosInfKey, 0};  // probabilities are <= 1: no key reaches +inf's
  } else if (kept > p.budget) {
    cut = radix_cut(key, B * S, static_cast<unsigned>(p.budget));
  }

  // 3. Lengths over contiguous ranges of requests, ties handed out in request order.
  const int64_t per_thread = (B + threads - 1) / threads;
  const int64_t begin = min(B, tid * per_thread), end = min(B, begin + per_thread);
  unsigned ties_here = 0;
  if (cut.ties > 0) {
    for (int64_t i = begin * S; i < end * S; ++i) ties_here += key[i] == cut.key;
  }
  const unsigned ties_before = block_exclusive_sum(ties_here).exclusive;
  unsigned ties_left = ties_before < cut.ties ? cut.ties - ties_before : 0;
  for (int64_t b = begin; b < end; ++b) {
    unsigned above = 0, equal = 0;
    for (int64_t n = 0; n < S; ++n) {
      const uint32_t k = key[b * S + n];
      above += k > cut.key;
      equal += k == cut.key && k != kDropped;
    }
    const unsigned ties = equal < ties_left ? equal : ties_left;
    ties_left -= ties;
    store_length(p, b, above + ties);
  }
}

// The launcher, compiled once per backend: kernel.cu wraps it as launch_select_prefixes_cuda,
// kernel_emulated.cpp as launch_select_prefixes_emulated (both declared in params.h).
inline void launch_select_prefixes(const SelectPrefixesParams& p, void* stream) {
  const size_t key_bytes = static_cast<size_t>(p.batch * p.positions) * sizeof(uint32_t);
  const bool keys_in_shared = key_bytes <= max_dynamic_smem(select_prefixes_kernel);
  TETRIS_LAUNCH(select_prefixes_kernel, 1, kSelectPrefixesThreads, keys_in_shared ? key_bytes : 0,
                stream, p, keys_in_shared);
}

}  // namespace tetris::TETRIS_KERNEL_NS
