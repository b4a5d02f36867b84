// Argument checks of verify_sampling (every backend calls these).
#pragma once

#include "verify_walk/slot_checks.h"

namespace tetris {

// slot_tokens, slot_parent [B, M] int32/int64 (M >= 1); target_probs [B, M, V] float32 (V >= 1);
// draft_probs None or like target_probs; uniforms [B, M] float32.
inline void check_verify_sampling_args(const at::Tensor& slot_tokens, const at::Tensor& slot_parent,
                                       const at::Tensor& target_probs,
                                       const std::optional<at::Tensor>& draft_probs,
                                       const at::Tensor& uniforms) {
  const char* op = "verify_sampling";
  check_verify_slot_args(op, slot_tokens, slot_parent);
  const int64_t B = slot_tokens.size(0);
  const int64_t M = slot_tokens.size(1);

  check_dtype(op, "target_probs", target_probs, {at::kFloat});
  check_dim(op, "target_probs", target_probs, 3, "[B, M, V]");
  check_size(op, "target_probs", target_probs, 0, B, "B");
  check_size(op, "target_probs", target_probs, 1, M, "M");
  TORCH_CHECK_VALUE(target_probs.size(2) >= 1, op,
                    ": argument 'target_probs': expected a vocabulary of V >= 1 tokens, got shape ",
                    target_probs.sizes());
  check_same_device(op, "target_probs", target_probs, slot_tokens, "slot_tokens");

  if (draft_probs.has_value()) {
    check_dtype(op, "draft_probs", *draft_probs, {at::kFloat});
    check_dim(op, "draft_probs", *draft_probs, 3, "[B, M, V]");
    check_size(op, "draft_probs", *draft_probs, 0, B, "B");
    check_size(op, "draft_probs", *draft_probs, 1, M, "M");
    check_size(op, "draft_probs", *draft_probs, 2, target_probs.size(2), "V, as target_probs");
    check_same_device(op, "draft_probs", *draft_probs, slot_tokens, "slot_tokens");
  }

  check_dtype(op, "uniforms", uniforms, {at::kFloat});
  check_slot_shape(op, "uniforms", uniforms, B, M, slot_tokens, "slot_tokens");
}

}  // namespace tetris
