// Radix select of a cut in a block (device code shared by the select and select_prefixes
// kernels): the take-th largest of K order-preserving uint32 keys (csrc/host_device/score_key.h), 8
// bits at a time from the top, with a warp-aggregated histogram and a block scan to find the digit.
// Key kDropped (0) marks an entry that does not take part.
#pragma once

#include <cstdint>

#include "kernel_common/primitives.cuh"

namespace tetris::TETRIS_KERNEL_NS {

inline constexpr uint32_t kDropped = 0;  // key of a candidate that is not kept
inline constexpr int kRadixBits = 8;
inline constexpr unsigned kRadixBuckets = 1u << kRadixBits;

// Where the budget cuts the global order: every kept key above `key`, and the first `ties`
// kept keys equal to it in flat order, are selected.
struct Cut {
  uint32_t key;
  unsigned ties;
};

// The `take`-th largest of the kept keys (1 <= take < number kept). Every thread calls it.
__device__ __forceinline__ Cut radix_cut(const uint32_t* key, int64_t K, unsigned take) {
  __shared__ unsigned histogram[kRadixBuckets];
  __shared__ unsigned chosen_digit, chosen_remaining;
  const unsigned tid = threadIdx.x;
  uint32_t prefix = 0, prefix_mask = 0;
  unsigned remaining = take;
  for (int shift = 32 - kRadixBits; shift >= 0; shift -= kRadixBits) {
    for (unsigned d = tid; d < kRadixBuckets; d += blockDim.x) histogram[d] = 0;
    __syncthreads();
    // Every lane runs the same number of iterations, so that the warp can vote on digits:
    // the lanes with equal digits add their count with one atomic.
    for (int64_t base = 0; base < K; base += blockDim.x) {
      const int64_t i = base + tid;
      const uint32_t k = i < K ? key[i] : kDropped;
      const bool counted = k != kDropped && (k & prefix_mask) == prefix;
      const unsigned digit = counted ? (k >> shift) & (kRadixBuckets - 1) : kRadixBuckets;
      const unsigned peers = __match_any_sync(kFullMask, digit);
      if (counted && lane_id() == static_cast<unsigned>(__ffs(static_cast<int>(peers)) - 1))
        atomicAdd(&histogram[digit], static_cast<unsigned>(__popc(peers)));
    }
    __syncthreads();
    // Buckets from the largest digit down: thread j looks at digit (buckets - 1 - j). The digit
    // where the running count reaches `remaining` holds the cut.
    const unsigned count = tid < kRadixBuckets ? histogram[kRadixBuckets - 1 - tid] : 0;
    const ScanResult<unsigned> above = block_exclusive_sum(count);
    if (tid < kRadixBuckets && above.exclusive < remaining &&
        above.exclusive + count >= remaining) {
      chosen_digit = kRadixBuckets - 1 - tid;
      chosen_remaining = remaining - above.exclusive;
    }
    __syncthreads();
    prefix |= chosen_digit << shift;
    prefix_mask |= (kRadixBuckets - 1) << shift;
    remaining = chosen_remaining;
  }
  return {prefix, remaining};
}

}  // namespace tetris::TETRIS_KERNEL_NS
