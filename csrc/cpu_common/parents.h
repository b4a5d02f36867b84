// Typed accessors of a parents tensor for the CPU ops' hot loops: the dtype is resolved once per
// op (visit_parents), not per element as in IndexMatrix (host_device/index_matrix.h), which
// reads every other index tensor.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

#include "host_device/tree_slots.h"

namespace tetris::cpu {

// parents = None: candidate n hangs below n - 1 (a chain).
struct ChainParents {
  static constexpr bool kIsChain = true;
  int64_t operator()(int64_t /*b*/, int64_t n) const { return chain_parent(n); }
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

}  // namespace tetris::cpu
