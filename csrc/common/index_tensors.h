// IndexMatrix views (host_device/index_matrix.h) of torch index tensors: the one reader of
// int32/int64 index tensors of any strides, for the CPU ops and the kernel params alike.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "host_device/index_matrix.h"

namespace tetris {

// An int32/int64 index tensor of up to two dimensions (validated by the caller).
inline IndexMatrix index_matrix(const at::Tensor& t) {
  IndexMatrix m;
  m.data = t.data_ptr();
  m.is_int64 = t.scalar_type() == at::kLong;
  m.stride0 = t.dim() > 0 ? t.stride(0) : 0;
  m.stride1 = t.dim() > 1 ? t.stride(1) : 0;
  return m;
}

// The same, or absent (an optional argument that was None).
inline IndexMatrix index_matrix(const std::optional<at::Tensor>& t) {
  return t.has_value() ? index_matrix(*t) : IndexMatrix{};
}

}  // namespace tetris
