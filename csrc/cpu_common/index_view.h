// Read-only element access to the index tensors (tokens, parents, caps) of any strides,
// without copying them.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace tetris::cpu {

// An int32/int64 tensor of up to two dimensions; the dtype test is one well-predicted branch
// per element (for tensors read once per candidate or request, outside hot loops).
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

// parents = None: candidate n hangs below n - 1 (a chain).
struct ChainParents {
  static constexpr bool kIsChain = true;
  int64_t operator()(int64_t /*b*/, int64_t n) const { return n - 1; }
};

// parents[b, n] of dtype T (int32_t or int64_t).
template <class T>
class TreeParents {
 public:
  static constexpr bool kIsChain = false;
  explicit TreeParents(const at::Tensor& parents)
      : data_(parents.data_ptr<T>()), stride0_(parents.stride(0)), stride1_(parents.stride(1)) {}
  int64_t operator()(int64_t b, int64_t n) const { return data_[b * stride0_ + n * stride1_]; }

 private:
  const T* data_;
  int64_t stride0_;
  int64_t stride1_;
};

// Calls f(parents accessor) with the accessor type matching `parents` (for hot loops).
template <class F>
decltype(auto) visit_parents(const std::optional<at::Tensor>& parents, F&& f) {
  if (!parents.has_value()) return f(ChainParents{});
  if (parents->scalar_type() == at::kLong) return f(TreeParents<int64_t>(*parents));
  return f(TreeParents<int32_t>(*parents));
}

// A parent index is valid when it is the root (-1) or an earlier candidate.
inline bool is_valid_parent(int64_t parent, int64_t n) { return parent >= -1 && parent < n; }

}  // namespace tetris::cpu
