// Argument checks shared by the CPU, CUDA and emulated implementations, so that every
// backend rejects the same inputs with the same message: "<op>: argument '<name>': expected ...".
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/irange.h>

#include <cmath>
#include <initializer_list>
#include <limits>
#include <optional>
#include <string>

namespace tetris {

inline void check_dtype(const char* op, const char* name, const at::Tensor& t,
                        std::initializer_list<at::ScalarType> allowed) {
  for (auto dt : allowed) {
    if (t.scalar_type() == dt) return;
  }
  std::string names;
  for (auto dt : allowed) {
    if (!names.empty()) names += " or ";
    names += c10::toString(dt);
  }
  TORCH_CHECK_TYPE(false, op, ": argument '", name, "': expected dtype ", names, ", got ",
                   t.scalar_type());
}

inline void check_dim(const char* op, const char* name, const at::Tensor& t, int64_t dim,
                      const char* layout) {
  TORCH_CHECK_VALUE(t.dim() == dim, op, ": argument '", name, "': expected a ", dim, "-D tensor ",
                    layout, ", got shape ", t.sizes());
}

inline void check_size(const char* op, const char* name, const at::Tensor& t, int64_t dim,
                       int64_t expected, const char* what) {
  TORCH_CHECK_VALUE(t.size(dim) == expected, op, ": argument '", name, "': expected size ",
                    expected, " (", what, ") at dim ", dim, ", got shape ", t.sizes());
}

inline void check_same_device(const char* op, const char* name, const at::Tensor& t,
                              const at::Tensor& reference, const char* reference_name) {
  TORCH_CHECK_VALUE(t.device() == reference.device(), op, ": argument '", name,
                    "': expected a tensor on ", reference.device(), " (the device of '",
                    reference_name, "'), got ", t.device());
}

// A temperature T scales logits by float32(1 / T): T must be finite, > 0, and 1 / T finite in
// float32 (T >= ~2.94e-39; smaller ones would scale by +inf, NaN for the top logit).
inline void check_temperature(const char* op, const char* name, double value) {
  TORCH_CHECK_VALUE(
      std::isfinite(value) && value > 0 && std::isfinite(static_cast<float>(1.0 / value)), op,
      ": argument '", name,
      "': expected a finite number > 0 whose reciprocal is a finite float32 "
      "(about 2.94e-39 <= temperature), got ",
      value);
}

// Size limits, checked before anything is allocated so that every backend rejects the same
// shapes (stride-0 expansions make any logical size cheap to pass in).
// Candidates, rows and slots are counted in int32 by the kernels (grid sizes, counts).
inline constexpr int64_t kMaxItems = std::numeric_limits<int32_t>::max();
// No output may be larger than a 47-bit user address space (128 TiB): beyond it the allocator
// could only fail, or the product of the sizes overflow.
inline constexpr int64_t kMaxOutputBytes = int64_t{1} << 47;

// `count` = `what` (e.g. "B * N candidates") of argument `name`, at most 2^31 - 1. The caller
// computes `count` from sizes that are each < 2^63 and whose product cannot overflow
// (use items_product).
inline void check_item_count(const char* op, const char* name, const at::Tensor& t, int64_t count,
                             const char* what) {
  TORCH_CHECK_VALUE(count <= kMaxItems, op, ": argument '", name, "': expected ", what,
                    " <= 2^31 - 1, got shape ", t.sizes());
}

// a * b, saturated at kMaxItems + 1 (a, b >= 0), for check_item_count.
inline int64_t items_product(int64_t a, int64_t b) {
  if (a == 0 || b == 0) return 0;
  return a > (kMaxItems + 1) / b ? kMaxItems + 1 : a * b;
}

// An output of `bytes` (computed without overflow: callers keep each factor <= 2^31) must fit.
inline void check_output_bytes(const char* op, const char* name, const at::Tensor& t, int64_t bytes,
                               const char* output) {
  TORCH_CHECK_VALUE(bytes <= kMaxOutputBytes, op, ": argument '", name, "': the output '", output,
                    "' would take ", bytes, " bytes, more than 2^47; got shape ", t.sizes());
}

// [B, N] int32/int64 index tensor on the device of `reference` (parents, tokens, ...).
inline void check_index_matrix(const char* op, const char* name, const at::Tensor& t, int64_t B,
                               int64_t N, const at::Tensor& reference, const char* reference_name) {
  check_dtype(op, name, t, {at::kInt, at::kLong});
  check_dim(op, name, t, 2, "[B, N]");
  check_size(op, name, t, 0, B, "B");
  check_size(op, name, t, 1, N, "N");
  check_same_device(op, name, t, reference, reference_name);
}

}  // namespace tetris
