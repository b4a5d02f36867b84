// CPU tree_mask and tree_mask_packed: the verification-block layout of the selected candidates
// (docs/ops.md). Both ops share the slot assignment (build_block) and the ancestor-row rule
// (fill_mask_rows); they differ only in how a mask row is stored.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/index_tensors.h"
#include "host_device/tree_slots.h"
#include "ops/tree_mask/checks.h"

namespace tetris {
namespace {

// The verification block of one request: slot 0 is the root, slots 1..count are the
// candidates that joined the block, in increasing n (so a parent's slot precedes its
// children's); slots count+1..M-1 are padding.
struct Block {
  int64_t count = 0;
  std::vector<int64_t> slot_of;    // [N] slot of each candidate, 0 when it is not in the block
  std::vector<int64_t> candidate;  // [M] candidate of each slot, -1 for the root and padding
  std::vector<int64_t> parent;     // [M] slot of the parent, -1 for the root and padding
  std::vector<int64_t> depth;      // [M] 0 for the root and padding
};

// Inputs read with their own strides; index values are checked before any use.
struct BlockInputs {
  at::TensorAccessor<bool, 2> selected;
  IndexMatrix parents;  // absent: chains
  int64_t N;
};

void build_block(const BlockInputs& in, int64_t b, Block& block) {
  const int64_t N = in.N;
  const int64_t M = N + 1;
  block.count = 0;
  block.slot_of.assign(N, 0);
  block.candidate.assign(M, -1);
  block.parent.assign(M, -1);
  block.depth.assign(M, 0);
  for (int64_t n = 0; n < N; ++n) {
    const int64_t p = in.parents.present() ? in.parents(b, n) : chain_parent(n);
    // Only a valid candidate index is looked up.
    const bool parent_in_block = parent_index_valid(p, n) && p >= 0 && block.slot_of[p] > 0;
    if (!joins_block(in.selected[b][n], p, n, parent_in_block)) continue;
    const int64_t s = ++block.count;
    block.slot_of[n] = s;
    block.candidate[s] = n;
    block.parent[s] = p < 0 ? 0 : block.slot_of[p];
    block.depth[s] = block.depth[block.parent[s]] + 1;
  }
}

// Row s of the mask holds slot s and its ancestors: its parent's row (complete already,
// parents come first) plus s itself. The root and padding rows hold only themselves.
// `rows` is zero-filled, row_len elements per row; set(row, j) marks slot j in a row.
template <class T, class Set>
void fill_mask_rows(const Block& block, int64_t M, T* rows, int64_t row_len, Set set) {
  for (int64_t s = 0; s < M; ++s) {
    T* row = rows + s * row_len;
    if (s >= 1 && s <= block.count) std::copy_n(rows + block.parent[s] * row_len, row_len, row);
    set(row, s);
  }
}

// Runs fn(b, block) for every request, requests in parallel (each writes only its own rows).
template <class Fn>
void for_each_block(const at::Tensor& selected, const std::optional<at::Tensor>& parents, Fn fn) {
  const int64_t B = selected.size(0);
  const BlockInputs in{selected.accessor<bool, 2>(), index_matrix(parents), selected.size(1)};
  at::parallel_for(0, B, 16, [&](int64_t begin, int64_t end) {
    Block block;
    for (int64_t b = begin; b < end; ++b) {
      build_block(in, b, block);
      fn(b, block);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tree_mask_cpu(
    const at::Tensor& selected, const std::optional<at::Tensor>& parents,
    const at::Tensor& prefix_lens) {
  check_tree_mask_args("tree_mask", selected, parents, prefix_lens);
  const int64_t B = selected.size(0);
  const int64_t M = selected.size(1) + 1;
  const auto long_opts = selected.options().dtype(at::kLong);
  at::Tensor slot_index = at::empty({B, M}, long_opts);
  at::Tensor slot_parent = at::empty({B, M}, long_opts);
  at::Tensor positions = at::empty({B, M}, long_opts);
  at::Tensor mask = at::zeros({B, M, M}, selected.options().dtype(at::kBool));
  const IndexMatrix prefix = index_matrix(prefix_lens);
  int64_t* index_out = slot_index.data_ptr<int64_t>();
  int64_t* parent_out = slot_parent.data_ptr<int64_t>();
  int64_t* position_out = positions.data_ptr<int64_t>();
  bool* mask_out = mask.data_ptr<bool>();

  for_each_block(selected, parents, [&](int64_t b, const Block& block) {
    for (int64_t s = 0; s < M; ++s) {
      index_out[b * M + s] = block.candidate[s];
      parent_out[b * M + s] = block.parent[s];
      // Unsigned addition: a huge prefix length wraps instead of overflowing (undefined).
      position_out[b * M + s] = static_cast<int64_t>(static_cast<uint64_t>(prefix(b)) +
                                                     static_cast<uint64_t>(block.depth[s]));
    }
    fill_mask_rows(block, M, mask_out + b * M * M, M, [](bool* row, int64_t j) { row[j] = true; });
  });
  return {slot_index, slot_parent, positions, mask};
}

std::tuple<at::Tensor, at::Tensor> tree_mask_packed_cpu(const at::Tensor& selected,
                                                        const std::optional<at::Tensor>& parents,
                                                        const at::Tensor& prefix_lens) {
  check_tree_mask_packed_args(selected, parents, prefix_lens);
  const int64_t B = selected.size(0);
  const int64_t M = selected.size(1) + 1;
  const int64_t row_bytes = packed_row_bytes(M);
  at::Tensor packed_mask = at::zeros({B, M, row_bytes}, selected.options().dtype(at::kByte));
  std::vector<int32_t> query_lens(B);
  uint8_t* packed_out = packed_mask.data_ptr<uint8_t>();

  for_each_block(selected, parents, [&](int64_t b, const Block& block) {
    query_lens[b] = static_cast<int32_t>(block.count + 1);
    fill_mask_rows(block, M, packed_out + b * M * row_bytes, row_bytes,
                   [](uint8_t* row, int64_t j) { row[j >> 3] |= packed_bit(j); });
  });

  at::Tensor cu_seqlens = at::empty({B + 1}, selected.options().dtype(at::kInt));
  int32_t* offsets = cu_seqlens.data_ptr<int32_t>();
  offsets[0] = 0;  // the argument check bounds the total by 2^31 - 1
  for (int64_t b = 0; b < B; ++b) offsets[b + 1] = offsets[b] + query_lens[b];
  return {cu_seqlens, packed_mask};
}

}  // namespace

TORCH_LIBRARY_IMPL(tetris, CPU, m) {
  m.impl("tree_mask", &tree_mask_cpu);
  m.impl("tree_mask_packed", &tree_mask_packed_cpu);
}

}  // namespace tetris
