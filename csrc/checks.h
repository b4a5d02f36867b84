// Argument checks shared by the CPU, CUDA and emulated implementations, so that every
// backend rejects the same inputs with the same message: "<op>: argument '<name>': expected ...".
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/irange.h>

#include <cmath>
#include <initializer_list>
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
  TORCH_CHECK_VALUE(t.dim() == dim, op, ": argument '", name, "': expected a ", dim,
                    "-D tensor ", layout, ", got shape ", t.sizes());
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

inline void check_finite_positive(const char* op, const char* name, double value) {
  TORCH_CHECK_VALUE(std::isfinite(value) && value > 0, op, ": argument '", name,
                    "': expected a finite number > 0, got ", value);
}

inline const at::ScalarType kIndexTypes[] = {at::kInt, at::kLong};

// [B, N] int32/int64 index tensor on the device of `reference` (parents, tokens, ...).
inline void check_index_matrix(const char* op, const char* name, const at::Tensor& t,
                               int64_t B, int64_t N, const at::Tensor& reference,
                               const char* reference_name) {
  check_dtype(op, name, t, {at::kInt, at::kLong});
  check_dim(op, name, t, 2, "[B, N]");
  check_size(op, name, t, 0, B, "B");
  check_size(op, name, t, 1, N, "N");
  check_same_device(op, name, t, reference, reference_name);
}

}  // namespace tetris
