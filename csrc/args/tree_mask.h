// Argument checks of tree_mask and tree_mask_packed (every backend calls these).
#pragma once

#include <limits>

#include "checks.h"

namespace tetris {

// selected [B, N] bool; parents [B, N] int32/int64 or None (chains); prefix_lens [B] int32/int64.
inline void check_tree_mask_args(const char* op, const at::Tensor& selected,
                                 const std::optional<at::Tensor>& parents,
                                 const at::Tensor& prefix_lens) {
  check_dtype(op, "selected", selected, {at::kBool});
  check_dim(op, "selected", selected, 2, "[B, N]");
  const int64_t B = selected.size(0);
  const int64_t N = selected.size(1);
  if (parents.has_value()) {
    check_index_matrix(op, "parents", *parents, B, N, selected, "selected");
  }
  check_dtype(op, "prefix_lens", prefix_lens, {at::kInt, at::kLong});
  check_dim(op, "prefix_lens", prefix_lens, 1, "[B]");
  check_size(op, "prefix_lens", prefix_lens, 0, B, "B");
  check_same_device(op, "prefix_lens", prefix_lens, selected, "selected");
}

// cu_seqlens is int32 (what varlen attention kernels take), so the whole block must fit.
inline void check_tree_mask_packed_args(const at::Tensor& selected,
                                        const std::optional<at::Tensor>& parents,
                                        const at::Tensor& prefix_lens) {
  const char* op = "tree_mask_packed";
  check_tree_mask_args(op, selected, parents, prefix_lens);
  const int64_t B = selected.size(0);
  const int64_t M = selected.size(1) + 1;
  TORCH_CHECK_VALUE(B == 0 || M <= std::numeric_limits<int32_t>::max() / B, op,
                    ": argument 'selected': expected B * (N + 1) <= 2^31 - 1 (int32 cu_seqlens), "
                    "got shape ", selected.sizes());
}

}  // namespace tetris
