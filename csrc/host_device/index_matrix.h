// Plain types that kernel parameter structs share (host-includable, no device code): views of
// int32/int64 index tensors with any strides, and the storage type of float tensors.
#pragma once

#include <cstdint>

#include "host_device/host_device.h"

namespace tetris {

// A [rows, cols] int32 or int64 tensor (tokens, parents, ...) or a [rows] one (cols unused),
// read element by element in whatever strides it has. `data == nullptr` means "absent"
// (an optional argument that was None).
struct IndexMatrix {
  const void* data = nullptr;
  bool is_int64 = false;
  int64_t stride0 = 0;
  int64_t stride1 = 0;

  TETRIS_HD bool present() const { return data != nullptr; }
  TETRIS_HD int64_t operator()(int64_t i, int64_t j = 0) const {
    const int64_t offset = i * stride0 + j * stride1;
    return is_int64 ? static_cast<const int64_t*>(data)[offset]
                    : static_cast<const int32_t*>(data)[offset];
  }
};

// Storage type of a floating-point tensor the kernels read (float16 / bfloat16 as raw bits).
enum class FloatType : uint8_t { kFloat32, kFloat16, kBFloat16 };

}  // namespace tetris
