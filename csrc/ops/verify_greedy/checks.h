// Argument checks of verify_greedy (every backend calls these).
#pragma once

#include "verify_walk/slot_checks.h"

namespace tetris {

// slot_tokens, slot_parent, target_tokens: [B, M] int32 or int64, M >= 1.
inline void check_verify_greedy_args(const at::Tensor& slot_tokens, const at::Tensor& slot_parent,
                                     const at::Tensor& target_tokens) {
  const char* op = "verify_greedy";
  check_verify_slot_args(op, slot_tokens, slot_parent);
  check_dtype(op, "target_tokens", target_tokens, {at::kInt, at::kLong});
  check_slot_shape(op, "target_tokens", target_tokens, slot_tokens.size(0), slot_tokens.size(1),
                   slot_tokens, "slot_tokens");
}

}  // namespace tetris
