// Argument checks of tree_mask and tree_mask_packed (every backend calls these).
#pragma once

#include <cstdint>

#include "common/checks.h"

namespace tetris {

// Both layouts' mask output, in bytes per row of M = N + 1 slots.
enum class MaskLayout { kDense, kPacked };

inline int64_t mask_row_bytes(MaskLayout layout, int64_t M) {
  return layout == MaskLayout::kPacked ? (M + 7) / 8 : M;
}

// selected [B, N] bool; parents [B, N] int32/int64 or None (chains); prefix_lens [B] int32/int64.
inline void check_tree_mask_args(const char* op, const at::Tensor& selected,
                                 const std::optional<at::Tensor>& parents,
                                 const at::Tensor& prefix_lens,
                                 MaskLayout layout = MaskLayout::kDense) {
  check_dtype(op, "selected", selected, {at::kBool});
  check_dim(op, "selected", selected, 2, "[B, N]");
  const int64_t B = selected.size(0);
  const int64_t N = selected.size(1);
  // B * (N + 1) slots; then the [B, N + 1, N + 1] mask has at most 2^62 entries (no overflow).
  check_item_count(op, "selected", selected, items_product(B, N + 1), "B * (N + 1) slots");
  const int64_t M = N + 1;
  check_output_bytes(op, "selected", selected, B * M * mask_row_bytes(layout, M),
                     layout == MaskLayout::kPacked ? "packed_mask" : "mask");
  if (parents.has_value()) {
    check_index_matrix(op, "parents", *parents, B, N, selected, "selected");
  }
  check_dtype(op, "prefix_lens", prefix_lens, {at::kInt, at::kLong});
  check_dim(op, "prefix_lens", prefix_lens, 1, "[B]");
  check_size(op, "prefix_lens", prefix_lens, 0, B, "B");
  check_same_device(op, "prefix_lens", prefix_lens, selected, "selected");
}

// cu_seqlens is int32 (what varlen attention kernels take): check_tree_mask_args's
// B * (N + 1) <= 2^31 - 1 slots makes the whole block fit.
inline void check_tree_mask_packed_args(const at::Tensor& selected,
                                        const std::optional<at::Tensor>& parents,
                                        const at::Tensor& prefix_lens) {
  check_tree_mask_args("tree_mask_packed", selected, parents, prefix_lens, MaskLayout::kPacked);
}

}  // namespace tetris
