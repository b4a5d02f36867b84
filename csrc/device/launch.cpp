// The CUDA-only part of csrc/device/launch.h (the emulator needs none of it).
#include "device/launch.h"

#ifdef TETRIS_WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

namespace tetris {

void* launch_stream(CudaTag, const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

void check_launch(CudaTag) { C10_CUDA_KERNEL_LAUNCH_CHECK(); }

}  // namespace tetris
#endif
