// The walk shared by the verify kernels, the device twin of csrc/verify_walk/cpu_walk.h: one block
// per request; from the root, offer the children of the current slot (in increasing slot
// order) to the op's acceptance rule, descend into the first accepted one, and when none is
// accepted write the bonus token the op names.
//
// The walk itself is sequential; the block parallelises the search for the next child (every
// thread scans a stride of the later slots, then a block-wide min) and whatever the op does
// per child or per slot (verify_sampling's passes over the vocabulary). Every thread follows
// the same path: all decisions are block-uniform values.
#pragma once

#include "host_device/tree_slots.h"
#include "kernel_common/backend.cuh"
#include "kernel_common/primitives.cuh"

namespace tetris::TETRIS_KERNEL_NS {
namespace verify_walk {

struct Min {
  __device__ __forceinline__ int64_t operator()(int64_t a, int64_t b) const {
    return b < a ? b : a;
  }
};

// The first slot s in (after, M) that is a child of `current` and that `offer(s)` accepts to
// try, or M when there is none. Block-wide: every thread calls it with the same arguments.
//   - The next 32 slots first, by every warp on its own (a ballot, no block barrier): each
//     warp reads the same slots and gets the same answer, so a step whose child is near (every
//     step of a chain) costs one warp vote.
//   - Then window by window of blockDim.x slots, a thread per slot and a block-wide min,
//     stopping at the first window that holds a child.
// A walk thus costs O(M / threads) block reductions plus one vote per step (rather than
// O(M^2 / threads) for a long accepted chain, had every thread scanned its stride of all later
// slots at every step, with a block reduction per step). `offer` must be a pure function of
// block-uniform state (it is evaluated redundantly by every warp).
template <class Offer>
__device__ int64_t next_child(const IndexMatrix& slot_parent, int64_t b, int64_t M, int64_t current,
                              int64_t after, Offer offer) {
  const int64_t near = after + 1 + lane_id();
  const bool near_hit =
      near < M && is_child_slot(slot_parent(b, near), near, current) && offer(near);
  const unsigned near_hits = __ballot_sync(kFullMask, near_hit);
  if (near_hits != 0) return after + __ffs(static_cast<int>(near_hits));  // after + 1 + first lane
  for (int64_t window = after + 1 + kWarpSize; window < M; window += blockDim.x) {
    const int64_t s = window + threadIdx.x;
    const int64_t found = s < M && is_child_slot(slot_parent(b, s), s, current) && offer(s) ? s : M;
    const int64_t first = block_all_reduce(found, Min{});
    if (first < M) return first;
  }
  return M;
}

// Walker (cf. csrc/verify_walk/cpu_walk.h), block-uniform, called by every thread:
//   void enter(int64_t slot)                  the walk arrives at `slot` (the root first);
//   bool offer(int64_t slot, int64_t child)   is `child` tried at all? (per thread, no barrier)
//   bool try_child(int64_t slot, int64_t child)   accept `child` of `slot`?
//   int64_t bonus(int64_t slot)               the token after the last accepted `slot`.
// Params has slot_tokens, slot_parent, slots and the three outputs of the verify ops.
template <class Params, class Walker>
__device__ void walk_verification_block(const Params& p, int64_t b, Walker& walker) {
  const int64_t M = p.slots;
  int64_t* accepted_slots = p.accepted_slots + b * M;
  int64_t* out_tokens = p.out_tokens + b * M;
  int64_t current = 0;
  int64_t count = 0;
  walker.enter(current);
  // Children of `current` are later slots; after descending into s, the children of s are
  // later than s, so the search only ever moves forward.
  for (int64_t after = current;;) {
    const int64_t child = next_child(p.slot_parent, b, M, current, after,
                                     [&](int64_t s) { return walker.offer(current, s); });
    if (child == M) break;
    after = child;
    if (!walker.try_child(current, child)) continue;
    if (threadIdx.x == 0) {
      accepted_slots[count] = child;
      out_tokens[count] = p.slot_tokens(b, child);
    }
    ++count;
    current = child;
    walker.enter(current);
  }
  const int64_t bonus = walker.bonus(current);
  if (threadIdx.x == 0) {
    out_tokens[count] = bonus;  // count <= M - 1: always in range
    p.num_accepted[b] = static_cast<int32_t>(count);
  }
  for (int64_t i = count + threadIdx.x; i < M; i += blockDim.x) {
    accepted_slots[i] = -1;
    if (i > count) out_tokens[i] = -1;
  }
}

// The kernel of a verify op: a block per request walks its verification block with the op's
// Walker, constructed as Walker(params, b).
template <class Walker, unsigned kMaxThreads, class Params>
__global__ void __launch_bounds__(kMaxThreads) walk_kernel(Params p) {
  const int64_t b = blockIdx.x;
  Walker walker(p, b);
  walk_verification_block(p, b, walker);
}

// One launch of walk_kernel: a block per request, threads_for(work, kMaxThreads) threads per
// block (work: what the op's per-slot steps split between threads). Nothing when B = 0.
template <class Walker, unsigned kMaxThreads, class Params>
inline void launch_walk(const Params& p, int64_t work, void* stream) {
  if (p.batch == 0) return;
  TETRIS_LAUNCH((walk_kernel<Walker, kMaxThreads, Params>), dim3(static_cast<unsigned>(p.batch)),
                dim3(threads_for(work, kMaxThreads)), 0, stream, p);
}

}  // namespace verify_walk
}  // namespace tetris::TETRIS_KERNEL_NS
