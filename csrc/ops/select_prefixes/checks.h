// Argument checks of select_prefixes, shared by the CPU implementation and the device launcher
// so that every backend rejects the same inputs with the same message (the fake in
// python/tetris_ext/ops.py mirrors them).
#pragma once

#include <ATen/MemoryOverlap.h>

#include <limits>

#include "common/checks.h"

namespace tetris {

inline void check_select_prefixes_args(const at::Tensor& probs, const at::Tensor& rows,
                                       const at::Tensor& lengths, int64_t budget) {
  constexpr const char* op = "select_prefixes";
  check_dtype(op, "probs", probs, {at::kFloat});
  check_dim(op, "probs", probs, 2, "[R, S]");
  check_dtype(op, "rows", rows, {at::kInt, at::kLong});
  check_dim(op, "rows", rows, 1, "[B]");
  check_same_device(op, "rows", rows, probs, "probs");
  check_dtype(op, "lengths", lengths, {at::kInt, at::kLong});
  check_dim(op, "lengths", lengths, 1, "[B]");
  check_size(op, "lengths", lengths, 0, rows.size(0), "B, the size of 'rows'");
  check_same_device(op, "lengths", lengths, probs, "probs");
  TORCH_CHECK_VALUE(budget >= 0, op, ": argument 'budget': expected an integer >= 0, got ", budget);
  TORCH_CHECK_VALUE(rows.size(0) * probs.size(1) <= std::numeric_limits<int32_t>::max(), op,
                    ": argument 'probs': expected B * S < 2^31 positions, got B = ", rows.size(0),
                    " and shape ", probs.sizes());
  // lengths is written in place: no element may be written twice, or be read as an input.
  TORCH_CHECK_VALUE(at::has_internal_overlap(lengths) != at::MemOverlap::Yes, op,
                    ": argument 'lengths': expected a tensor without overlapping elements (it is "
                    "written in place), got strides ",
                    lengths.strides());
  for (const auto& [name, input] : {std::pair{"rows", &rows}, std::pair{"probs", &probs}}) {
    const at::MemOverlapStatus status = at::get_overlap_status(lengths, *input);
    TORCH_CHECK_VALUE(
        status != at::MemOverlapStatus::Full && status != at::MemOverlapStatus::Partial, op,
        ": argument 'lengths': expected memory apart from '", name, "' (it is written in place)");
  }
}

}  // namespace tetris
