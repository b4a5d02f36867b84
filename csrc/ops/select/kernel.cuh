// select kernel (semantics: docs/ops.md; the CPU twin: csrc/ops/select/cpu.cpp).
//
// One block of 1024 threads handles the whole batch in one launch, in the CPU's steps:
//   0. score keys: score_key(scores[b, n]) (order-preserving uint32, csrc/host_device/score_key.h)
//   and
//      parents, read coalesced into shared memory (global workspace when B * N is too large);
//   1. effective keys, a thread per request walking n upwards (parents come first):
//      key[n] = min(key[n], key[parent]), 0 ("dropped") for invalid parents and below
//      min_key; then the per-request caps: a chain keeps its first `cap` candidates, a tree
//      over its cap keeps its `cap` best (key desc, n asc), a warp per request, O(N) each;
//   2. radix select over the kept keys, 8 bits at a time from the top (warp-aggregated
//      histogram, block scan to find the digit), giving the budget-th largest key T and how
//      many of the keys equal to T fit;
//   3. outputs: keys > T are selected, and the first ties (keys == T) in flat (b, n) order,
//      found by a block scan over contiguous per-thread ranges; counts by a thread per request.
// The tie order (e desc, b asc, n asc) is thus exactly the CPU's: a candidate's position in
// the global order is its 64-bit key (score key, then flat index b * N + n), whose low half is
// resolved by the flat-order scan instead of four more radix passes (docs/kernels.md).
#pragma once

#include <cstdint>

#include "host_device/score_key.h"
#include "host_device/tree_slots.h"
#include "kernel_common/primitives.cuh"
#include "kernel_common/radix_cut.cuh"
#include "ops/select/params.h"

namespace tetris::TETRIS_KERNEL_NS {

inline constexpr unsigned kSelectThreads = 1024;
inline constexpr uint32_t kTakenTie = 0xFFFFFFFFu;  // above every score key
static_assert(kTakenTie > kPosInfKey);
inline constexpr int32_t kInvalidParent = -2;  // parent index outside [-1, n - 1]

// Step 1 for a tree request whose cap drops candidates: keep its `cap` best kept keys (key
// desc, n asc), dropping the rest. Called by the 32 lanes of one warp, in O(N) per request
// (rather than O(N^2) by ranking each candidate against the whole request):
//   - the cap-th largest key, bit by bit from the top: the largest t with at least `cap` kept
//     keys >= t (kDropped = 0 never counts; 32 counting passes of N / 32 per lane);
//   - keys above it are kept, and its first ties in n order while `cap` is not reached (a
//     ballot per 32 candidates).
// cap = 0 drops everything (t ends at 0xFFFFFFFF, above every score key).
__device__ __forceinline__ void keep_best_of_request(uint32_t* request_key, int64_t N,
                                                     int64_t cap) {
  const unsigned lane = lane_id();
  uint32_t cut = 0;
  for (int bit = 31; bit >= 0; --bit) {
    const uint32_t trial = cut | (1u << bit);
    unsigned at_least = 0;
    for (int64_t n = lane; n < N; n += kWarpSize) at_least += request_key[n] >= trial;
    if (warp_all_reduce(at_least, Sum{}) >= cap) cut = trial;
  }
  unsigned above_here = 0;
  for (int64_t n = lane; n < N; n += kWarpSize) above_here += request_key[n] > cut;
  int64_t ties_left = cap - static_cast<int64_t>(warp_all_reduce(above_here, Sum{}));
  const unsigned lanes_before = (1u << lane) - 1u;
  for (int64_t base = 0; base < N; base += kWarpSize) {
    const int64_t n = base + lane;
    const uint32_t k = n < N ? request_key[n] : kDropped;
    const bool tie = k == cut;  // cut >= 1: never a dropped key
    const unsigned ties = __ballot_sync(kFullMask, tie);
    const bool keep = k > cut || (tie && __popc(ties & lanes_before) < ties_left);
    if (k != kDropped && !keep) request_key[n] = kDropped;
    ties_left -= __popc(ties);
  }
}

__global__ void __launch_bounds__(kSelectThreads)
    select_kernel(SelectParams p, bool keys_in_shared) {
  const int64_t B = p.batch, N = p.candidates, K = B * N;
  const unsigned tid = threadIdx.x, threads = blockDim.x;
  const bool is_chain = !p.parents.present();
  uint32_t* key = keys_in_shared ? TETRIS_DYNAMIC_SMEM(uint32_t) : p.workspace;
  int32_t* parent_of = reinterpret_cast<int32_t*>(key + K);

  // 0. Score keys and parents, coalesced.
  for (int64_t i = tid; i < K; i += threads) {
    const int64_t b = i / N, n = i % N;
    key[i] = score_key(p.scores[b * p.scores_stride[0] + n * p.scores_stride[1]]);
    if (!is_chain) {
      const int64_t parent = p.parents(b, n);
      parent_of[i] = parent_index_valid(parent, n) ? static_cast<int32_t>(parent) : kInvalidParent;
    }
  }
  __syncthreads();

  // 1. Effective keys and caps, a thread per request. `counts` holds, until step 3, the cap
  // of each tree request whose cap drops candidates (-1 otherwise).
  for (int64_t b = tid; b < B; b += threads) {
    uint32_t* request_key = key + b * N;
    int64_t eligible = 0;
    for (int64_t n = 0; n < N; ++n) {
      const int32_t parent = is_chain ? static_cast<int32_t>(n - 1) : parent_of[b * N + n];
      uint32_t k = request_key[n];
      if (parent == kInvalidParent) {
        k = kDropped;
      } else if (parent >= 0) {
        k = min(k, request_key[parent]);
      }
      // Dropping at once is exact: keys only decrease along a path, and a dropped parent
      // (kDropped = 0, below every key) drops its children through the min.
      if (k < p.min_key) k = kDropped;
      request_key[n] = k;
      eligible += k != kDropped;
    }
    const int64_t cap = p.caps.present() ? max(p.caps(b), int64_t{0}) : N;
    const bool over_cap = eligible > cap;
    if (over_cap && is_chain) {
      // Eligible candidates of a chain are a prefix: the best `cap` are the first `cap`.
      for (int64_t n = cap; n < N; ++n) request_key[n] = kDropped;
    }
    p.counts[b] = over_cap && !is_chain ? static_cast<int32_t>(cap) : -1;
  }
  __syncthreads();

  if (p.caps.present() && !is_chain) {
    // A tree request over its cap: a warp per request (no barrier inside).
    for (int64_t b = warp_id(); b < B; b += num_warps()) {
      const int32_t cap = p.counts[b];
      if (cap >= 0) keep_best_of_request(key + b * N, N, cap);
    }
    __syncthreads();
  }

  // 2. The cut.
  unsigned kept_here = 0;
  for (int64_t i = tid; i < K; i += threads) kept_here += key[i] != kDropped;
  const unsigned kept = block_all_reduce(kept_here, Sum{});
  Cut cut{kDropped, 0};  // everything kept fits
  if (p.budget == 0) {
    cut = {kPosInfKey, 0};  // no key is above +inf's, and no ties are taken
  } else if (kept > p.budget) {
    cut = radix_cut(key, K, static_cast<unsigned>(p.budget));
  }

  // 3. Outputs. The first `cut.ties` keys equal to the cut in flat order are taken: they get a
  // key above every score key, so that afterwards "selected" is simply "key above the cut".
  if (cut.ties > 0) {
    const int64_t per_thread = (K + threads - 1) / threads;
    const int64_t begin = min(K, tid * per_thread), end = min(K, begin + per_thread);
    unsigned ties_here = 0;
    for (int64_t i = begin; i < end; ++i) ties_here += key[i] == cut.key;
    unsigned rank = block_exclusive_sum(ties_here).exclusive;
    for (int64_t i = begin; i < end && rank < cut.ties; ++i) {
      if (key[i] == cut.key) {
        key[i] = kTakenTie;
        ++rank;
      }
    }
    __syncthreads();
  }
  for (int64_t i = tid; i < K; i += threads) p.selected[i] = key[i] > cut.key;
  for (int64_t b = tid; b < B; b += threads) {
    int32_t count = 0;
    for (int64_t n = 0; n < N; ++n) count += key[b * N + n] > cut.key;
    p.counts[b] = count;
  }
}

// The launcher, compiled once per backend: kernel.cu wraps it as launch_select_cuda,
// kernel_emulated.cpp as launch_select_emulated (both declared in params.h).
inline void launch_select(const SelectParams& p, void* stream) {
  const size_t key_bytes =
      static_cast<size_t>(select_workspace_words(p.batch, p.candidates)) * sizeof(uint32_t);
  const bool keys_in_shared = key_bytes <= max_dynamic_smem(select_kernel);
  TETRIS_LAUNCH(select_kernel, 1, kSelectThreads, keys_in_shared ? key_bytes : 0, stream, p,
                keys_in_shared);
}

}  // namespace tetris::TETRIS_KERNEL_NS
