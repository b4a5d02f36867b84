// tree_mask and tree_mask_packed kernels, written once for CUDA and the CPU emulation harness
// (csrc/kernel_common/backend.cuh). Semantics: docs/ops.md; the CPU twin:
// csrc/ops/tree_mask/cpu.cpp.
//
// One block per request lays out its verification block in three phases, separated by
// barriers (a barrier also makes the block's global writes visible to the whole block):
//   1. One thread per candidate walks the ancestor chain (bounded by N) to learn whether the
//      candidate joins the block and at what depth. A block-wide exclusive scan of the join
//      flags, tile by tile, gives every joining candidate its slot: slots follow increasing n,
//      as on the CPU, so a parent's slot comes before its children's.
//   2. One thread per slot finds the parent's slot by binary search in slot_index (increasing
//      over slots 1..count) and fills the root and padding slots.
//   3. One thread per mask column (per byte of 8 columns in the packed layout) builds its
//      column top to bottom with the CPU's rule "row s = row of slot_parent[s], plus s": the
//      parent's row is earlier in the same column, written by the same thread, so no barrier
//      is needed and consecutive threads write consecutive bytes of a row.
// tree_mask_packed then turns the per-request query lengths into offsets (cu_seqlens) with a
// second, one-block launch. No atomics, no data-dependent allocation, no host sync.
#pragma once

#include "host_device/tree_slots.h"
#include "kernel_common/backend.cuh"
#include "kernel_common/primitives.cuh"
#include "ops/tree_mask/params.h"

namespace tetris::TETRIS_KERNEL_NS {
namespace tree_mask_kernels {

constexpr unsigned kMaxThreads = 256;       // per request
constexpr unsigned kOffsetsThreads = 1024;  // the cu_seqlens scan over the batch

__device__ __forceinline__ int64_t candidate_parent(const TreeMaskParams& p, int64_t b, int64_t n) {
  return p.parents.present() ? p.parents(b, n) : chain_parent(n);
}

__device__ __forceinline__ bool is_selected(const TreeMaskParams& p, int64_t b, int64_t n) {
  return p.selected[b * p.selected_stride[0] + n * p.selected_stride[1]];
}

// Depth of candidate n in the verification block (1 for a child of the root), or 0 when it
// stays out: it joins when it and all its ancestors are selected with valid parent indices
// (joins_block along the chain; each step checks one link, the next step the parent's own).
// Valid parent indices strictly decrease, so the walk takes at most n + 1 steps; the bound
// makes that explicit, and only valid candidate indices are ever read.
__device__ int64_t depth_in_block(const TreeMaskParams& p, int64_t b, int64_t n) {
  int64_t node = n;
  for (int64_t depth = 1; depth <= n + 1; ++depth) {
    const int64_t parent = candidate_parent(p, b, node);
    if (!joins_block(is_selected(p, b, node), parent, node, /*parent_in_block=*/true)) return 0;
    if (parent == -1) return depth;
    node = parent;
  }
  return 0;
}

// The slot of candidate n, known to be in the block: slot_index[1..count] is increasing.
__device__ __forceinline__ int64_t slot_of(const int64_t* slot_index, int64_t count, int64_t n) {
  int64_t lo = 1, hi = count;  // the answer lies in [lo, hi]
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (slot_index[mid] < n)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

// The two mask layouts. A word holds the bits of kColumns consecutive slots of one row.
struct BoolRows {
  using Word = bool;
  static constexpr int64_t kColumns = 1;
  static __device__ __forceinline__ Word* rows(const TreeMaskParams& p) { return p.mask; }
  static __device__ __forceinline__ Word bit(int64_t /*slot*/) { return true; }
};

struct PackedRows {  // FlashInfer's packbits layout, little bit order
  using Word = uint8_t;
  static constexpr int64_t kColumns = 8;
  static __device__ __forceinline__ Word* rows(const TreeMaskParams& p) { return p.packed_mask; }
  static __device__ __forceinline__ Word bit(int64_t slot) { return packed_bit(slot); }
};

template <class Rows>
__global__ void __launch_bounds__(kMaxThreads) layout_kernel(TreeMaskParams p) {
  using Word = typename Rows::Word;
  const int64_t b = blockIdx.x;
  const int64_t N = p.candidates;
  const int64_t M = N + 1;
  const int64_t tid = threadIdx.x;
  const int64_t threads = blockDim.x;
  int64_t* slot_index = p.slot_index + b * M;
  int64_t* slot_parent = p.slot_parent + b * M;
  int64_t* positions = p.positions ? p.positions + b * M : nullptr;
  const int64_t prefix = p.prefix_lens(b);
  // Unsigned addition, as on the CPU: a huge prefix length wraps instead of overflowing.
  auto position = [prefix](int64_t depth) {
    return static_cast<int64_t>(static_cast<uint64_t>(prefix) + static_cast<uint64_t>(depth));
  };

  // 1. Which candidates join, and their slots (the scan's carry is the same in every thread).
  int64_t count = 0;
  for (int64_t tile = 0; tile < N; tile += threads) {
    const int64_t n = tile + tid;
    const int64_t depth = n < N ? depth_in_block(p, b, n) : 0;
    const ScanResult<int> joined = block_exclusive_sum<int>(depth > 0 ? 1 : 0);
    if (depth > 0) {
      const int64_t s = 1 + count + joined.exclusive;
      slot_index[s] = n;
      if (positions) positions[s] = position(depth);
    }
    count += joined.total;
  }
  __syncthreads();

  // 2. Parent slots; the root and the padding.
  for (int64_t s = tid; s < M; s += threads) {
    if (s >= 1 && s <= count) {
      const int64_t parent = candidate_parent(p, b, slot_index[s]);
      slot_parent[s] = parent == -1 ? 0 : slot_of(slot_index, count, parent);
    } else {
      slot_index[s] = -1;
      slot_parent[s] = -1;
      if (positions) positions[s] = position(0);
    }
  }
  if (tid == 0 && p.cu_seqlens) p.cu_seqlens[b + 1] = static_cast<int32_t>(count + 1);
  __syncthreads();

  // 3. The mask, column by column (a column of words in the packed layout).
  const int64_t words = (M + Rows::kColumns - 1) / Rows::kColumns;
  Word* rows = Rows::rows(p) + b * M * words;
  for (int64_t w = tid; w < words; w += threads) {
    Word* column = rows + w;  // row s of this column: column[s * words]
    const int64_t first_slot = w * Rows::kColumns;
    for (int64_t s = 0; s < M; ++s) {
      Word word = Word(0);
      // A slot before this word's first column has no bit in it: its ancestors are earlier.
      if (s >= first_slot && s >= 1 && s <= count) word = column[slot_parent[s] * words];
      if (s / Rows::kColumns == w) word = static_cast<Word>(word | Rows::bit(s));
      column[s * words] = word;
    }
  }
}

// cu_seqlens[1..B] hold the query lengths (count + 1); an inclusive scan over the batch, tile
// by tile, turns them into offsets in place.
__global__ void __launch_bounds__(kOffsetsThreads)
    query_offsets_kernel(int32_t* cu_seqlens, int64_t batch) {
  const int64_t tid = threadIdx.x;
  int32_t carry = 0;
  for (int64_t tile = 0; tile < batch; tile += blockDim.x) {
    const int64_t i = tile + tid;
    const int32_t length = i < batch ? cu_seqlens[i + 1] : 0;
    const ScanResult<int32_t> scan = block_exclusive_sum<int32_t>(length);
    if (i < batch) cu_seqlens[i + 1] = carry + scan.exclusive + length;
    carry += scan.total;
  }
  if (tid == 0) cu_seqlens[0] = 0;
}

}  // namespace tree_mask_kernels
// The launchers, compiled once per backend: kernel.cu wraps them as launch_<name>_cuda,
// kernel_emulated.cpp as launch_<name>_emulated (declared in params.h).
inline void launch_tree_mask(const TreeMaskParams& params, void* stream) {
  namespace k = tree_mask_kernels;
  if (params.batch == 0) return;
  const unsigned threads = threads_for(params.candidates + 1, k::kMaxThreads);
  TETRIS_LAUNCH((k::layout_kernel<k::BoolRows>), dim3(static_cast<unsigned>(params.batch)),
                dim3(threads), 0, stream, params);
}

inline void launch_tree_mask_packed(const TreeMaskParams& params, void* stream) {
  namespace k = tree_mask_kernels;
  if (params.batch == 0) return;  // cu_seqlens = [0] is written by the caller
  const unsigned threads = threads_for(params.candidates + 1, k::kMaxThreads);
  TETRIS_LAUNCH((k::layout_kernel<k::PackedRows>), dim3(static_cast<unsigned>(params.batch)),
                dim3(threads), 0, stream, params);
  TETRIS_LAUNCH(k::query_offsets_kernel, dim3(1),
                dim3(threads_for(params.batch, k::kOffsetsThreads)), 0, stream, params.cu_seqlens,
                params.batch);
}

}  // namespace tetris::TETRIS_KERNEL_NS
