// Read-only element access to int32/int64 index tensors of any strides (tokens, parents,
// caps) without copying them. The dtype test is one well-predicted branch per element.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace tetris::cpu {

class IndexView {
 public:
  explicit IndexView(const at::Tensor& t)
      : data_(t.data_ptr()),
        is_int64_(t.scalar_type() == at::kLong),
        stride0_(t.dim() > 0 ? t.stride(0) : 0),
        stride1_(t.dim() > 1 ? t.stride(1) : 0) {}

  int64_t operator()(int64_t i) const { return load(i * stride0_); }
  int64_t operator()(int64_t i, int64_t j) const { return load(i * stride0_ + j * stride1_); }

 private:
  int64_t load(int64_t offset) const {
    return is_int64_ ? static_cast<const int64_t*>(data_)[offset]
                     : static_cast<const int32_t*>(data_)[offset];
  }

  const void* data_;
  bool is_int64_;
  int64_t stride0_;
  int64_t stride1_;
};

// Parent of candidate n of request b: parents[b, n], or n - 1 for chains (parents = None).
class ParentView {
 public:
  explicit ParentView(const std::optional<at::Tensor>& parents) {
    if (parents.has_value()) view_.emplace(*parents);
  }
  bool is_chain() const { return !view_.has_value(); }
  int64_t operator()(int64_t b, int64_t n) const { return view_ ? (*view_)(b, n) : n - 1; }

 private:
  std::optional<IndexView> view_;
};

// A parent index is valid when it is the root (-1) or an earlier candidate.
inline bool is_valid_parent(int64_t parent, int64_t n) { return parent >= -1 && parent < n; }

}  // namespace tetris::cpu
