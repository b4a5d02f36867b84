// Checks shared by verify_greedy and verify_sampling: the [B, M] per-slot tensors.
#pragma once

#include "common/checks.h"

namespace tetris {

// [B, M] tensor on the device of `reference` (dtype checked by the caller).
inline void check_slot_shape(const char* op, const char* name, const at::Tensor& t, int64_t B,
                             int64_t M, const at::Tensor& reference, const char* reference_name) {
  check_dim(op, name, t, 2, "[B, M]");
  check_size(op, name, t, 0, B, "B");
  check_size(op, name, t, 1, M, "M");
  check_same_device(op, name, t, reference, reference_name);
}

// slot_tokens [B, M] and slot_parent [B, M], int32 or int64, M >= 1 (slot 0 is the root).
inline void check_verify_slot_args(const char* op, const at::Tensor& slot_tokens,
                                   const at::Tensor& slot_parent) {
  check_dtype(op, "slot_tokens", slot_tokens, {at::kInt, at::kLong});
  check_dim(op, "slot_tokens", slot_tokens, 2, "[B, M]");
  TORCH_CHECK_VALUE(slot_tokens.size(1) >= 1, op,
                    ": argument 'slot_tokens': expected M >= 1 slots (slot 0 is the root), "
                    "got shape ",
                    slot_tokens.sizes());
  check_item_count(op, "slot_tokens", slot_tokens,
                   items_product(slot_tokens.size(0), slot_tokens.size(1)), "B * M slots");
  check_dtype(op, "slot_parent", slot_parent, {at::kInt, at::kLong});
  check_slot_shape(op, "slot_parent", slot_parent, slot_tokens.size(0), slot_tokens.size(1),
                   slot_tokens, "slot_tokens");
}

}  // namespace tetris
