// What the torch-facing device launchers (csrc/ops/<op>/device_launcher.h) share: views of
// tensors as kernel params, and one launch of a backend's kernels on the caller's stream.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>

#include "common/index_tensors.h"

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

// The strides of `t` (in elements), for a params field `int64_t <name>_stride[D]` of a D-D tensor.
template <size_t D>
void copy_strides(const at::Tensor& t, int64_t (&stride)[D]) {
  for (size_t d = 0; d < D; ++d) stride[d] = t.stride(static_cast<int64_t>(d));
}

}  // namespace tetris
