// What the torch-facing launchers (csrc/ops/<op>/device_launcher.cpp) need from torch for each backend:
// the stream to launch on, the check after a launch, and views of tensors as kernel params.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "host_device/index_matrix.h"
#include "kernel_common/tags.h"

namespace tetris {

// The current CUDA stream of the device of `t` (c10::cuda::getCurrentCUDAStream), so that
// the kernels order with the caller's work and CUDA graph capture records them.
void* launch_stream(CudaTag, const at::Tensor& t);
// The emulator runs a launch to completion on the calling thread: no stream.
inline void* launch_stream(EmuTag, const at::Tensor&) { return nullptr; }

// Raises the error of the launches just made, if any (C10_CUDA_KERNEL_LAUNCH_CHECK). The
// emulator throws from the launch itself.
void check_launch(CudaTag);
inline void check_launch(EmuTag) {}

// An int32/int64 index tensor (validated by the caller), or absent.
inline IndexMatrix index_matrix(const std::optional<at::Tensor>& t) {
  IndexMatrix m;
  if (!t.has_value()) return m;
  m.data = t->data_ptr();
  m.is_int64 = t->scalar_type() == at::kLong;
  m.stride0 = t->dim() > 0 ? t->stride(0) : 0;
  m.stride1 = t->dim() > 1 ? t->stride(1) : 0;
  return m;
}

}  // namespace tetris
