// What the torch-facing device launchers (csrc/ops/<op>/device_launcher.cpp) share: views of
// tensors as kernel params, and one launch of a backend's kernels on the caller's stream.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "host_device/index_matrix.h"

namespace tetris {

// One op's kernels on one backend: launch_<op>_cuda or launch_<op>_emulated (params.h).
template <class Params>
using KernelLauncher = void (*)(const Params& params, void* stream);

// The stream a launch for `t` goes on: for a CUDA tensor torch's current stream of its device
// (c10::cuda::getCurrentCUDAStream), so that the kernels order with the caller's work and CUDA
// graph capture records them; for a CPU tensor (the emulator runs a launch to completion on the
// calling thread) none.
void* launch_stream(const at::Tensor& t);
// Raises the error of the launches just made for `t`, if any (C10_CUDA_KERNEL_LAUNCH_CHECK; the
// emulator throws from the launch itself).
void check_launch(const at::Tensor& t);

// Launches `launch` on the stream of `t`'s device and raises its launch error.
template <class Params>
void launch_kernels(KernelLauncher<Params> launch, const Params& params, const at::Tensor& t) {
  launch(params, launch_stream(t));
  check_launch(t);
}

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
