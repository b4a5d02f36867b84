// The stream and launch check of csrc/common/device_launch.h (CUDA needs them; the emulator
// does not), and the flag that says whether this library has the CUDA kernels.
#include "common/device_launch.h"

#ifdef TETRIS_WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#endif

// Read through ctypes by tetris_ext.BUILT_WITH_CUDA (python/tetris_ext/__init__.py), so that
// tests can require a CUDA kernel for every op exactly when the build compiled them. Builds
// with neither CUDA nor emulation have no device launchers and no such symbol: also "no".
extern "C" int tetris_ext_built_with_cuda() {
#ifdef TETRIS_WITH_CUDA
  return 1;
#else
  return 0;
#endif
}

namespace tetris {

void* launch_stream(const at::Tensor& t) {
#ifdef TETRIS_WITH_CUDA
  if (t.is_cuda()) return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
#endif
  return nullptr;
}

void check_launch(const at::Tensor& t) {
#ifdef TETRIS_WITH_CUDA
  if (t.is_cuda()) C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
}

}  // namespace tetris
