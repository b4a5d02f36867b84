// Argument checks of select, shared by the CPU implementation and the device launcher so that
// every backend rejects the same inputs with the same message.
#pragma once

#include <cmath>
#include <optional>

#include "common/checks.h"
#include "host_device/score_key.h"

namespace tetris {

inline void check_select_args(const at::Tensor& scores, int64_t budget,
                              const std::optional<at::Tensor>& parents,
                              const std::optional<at::Tensor>& max_per_request,
                              std::optional<double> min_score) {
  constexpr const char* op = "select";
  check_dtype(op, "scores", scores, {at::kFloat});
  check_dim(op, "scores", scores, 2, "[B, N]");
  const int64_t B = scores.size(0);
  const int64_t N = scores.size(1);
  check_item_count(op, "scores", scores, items_product(B, N), "B * N candidates");
  TORCH_CHECK_VALUE(budget >= 0, op, ": argument 'budget': expected an integer >= 0, got ", budget);
  if (parents.has_value()) {
    check_index_matrix(op, "parents", *parents, B, N, scores, "scores");
  }
  if (max_per_request.has_value()) {
    const at::Tensor& caps = *max_per_request;
    check_dtype(op, "max_per_request", caps, {at::kInt, at::kLong});
    check_dim(op, "max_per_request", caps, 1, "[B]");
    check_size(op, "max_per_request", caps, 0, B, "B");
    check_same_device(op, "max_per_request", caps, scores, "scores");
  }
  if (min_score.has_value()) {
    TORCH_CHECK_VALUE(!std::isnan(*min_score), op,
                      ": argument 'min_score': expected a number (not NaN) or None, got nan");
  }
}

// The smallest score key a candidate needs to be eligible: e > -inf, and e >= min_score where
// min_score is rounded to float32 first (as comparing a float32 tensor with a Python number
// does). Host helper for every backend.
inline uint32_t select_min_eligible_key(std::optional<double> min_score) {
  uint32_t floor = kNegInfKey + 1;
  if (min_score.has_value()) {
    const uint32_t key = score_key(static_cast<float>(*min_score));
    if (key > floor) floor = key;
  }
  return floor;
}

}  // namespace tetris
