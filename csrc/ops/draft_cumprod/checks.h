// Argument checks of draft_cumprod, shared by the CPU implementation and the device launcher
// so that every backend rejects the same inputs with the same message.
#pragma once

#include <optional>

#include "common/checks.h"

namespace tetris {

inline void check_draft_cumprod_args(const at::Tensor& logits, const at::Tensor& tokens,
                                     const std::optional<at::Tensor>& parents, double temperature) {
  constexpr const char* op = "draft_cumprod";
  check_dtype(op, "logits", logits, {at::kFloat, at::kHalf, at::kBFloat16});
  check_dim(op, "logits", logits, 3, "[B, N, V]");
  const int64_t B = logits.size(0);
  const int64_t N = logits.size(1);
  check_item_count(op, "logits", logits, items_product(B, N), "B * N rows");
  check_index_matrix(op, "tokens", tokens, B, N, logits, "logits");
  if (parents.has_value()) {
    check_index_matrix(op, "parents", *parents, B, N, logits, "logits");
  }
  check_temperature(op, "temperature", temperature);
}

}  // namespace tetris
