// What kernel source sees of the machine it runs on. Kernel headers (csrc/ops/<op>/kernel.cuh)
// include this and nothing backend-specific, so the same text compiles
//   - under nvcc, for the GPU (csrc/ops/<op>/kernel.cu), into namespace tetris::cuda, and
//   - under the host compiler with the CPU emulator (csrc/ops/<op>/kernel_emulated.cpp, which
//     includes emulator/emulator.h first), into namespace tetris::emu.
// The two namespaces keep the two compilations of one kernel apart in one library. Each
// kernel header ends with `launch_<op>(const Params&, void* stream)` in that namespace; kernel.cu
// and kernel_emulated.cpp wrap it as the named entry points launch_<op>_cuda and
// launch_<op>_emulated that params.h declares. Both backends provide:
//   TETRIS_KERNEL_NS           cuda | emu
//   TETRIS_DYNAMIC_SMEM(T)     T* to the launch's dynamic shared memory
//   TETRIS_LAUNCH(kernel, grid, block, smem_bytes, stream, args...)
//                              the launch on `stream` (a kernel name with template arguments
//                              goes in parentheses: TETRIS_LAUNCH((k<T, 256>), ...))
//   TETRIS_UNROLL              `#pragma unroll` for the loop that follows (nothing on the CPU)
//   max_dynamic_smem(kernel)   the most dynamic shared memory `kernel` may ask for at launch
#pragma once

#include "host_device/host_device.h"

#if defined(__CUDACC__)
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <tuple>
#include <utility>
#include <vector>

#define TETRIS_KERNEL_NS cuda

namespace tetris::cuda {

// `extern __shared__` is spelled once, here: the emulator has no such declaration.
template <class T>
__device__ __forceinline__ T* dynamic_smem() {
  extern __shared__ __align__(16) unsigned char tetris_dynamic_smem[];
  return reinterpret_cast<T*>(tetris_dynamic_smem);
}

// The triple-chevron launch on the caller's stream (the emulator's twin runs the grid on the
// CPU). Launch errors are picked up by the torch-facing launcher (csrc/common/device_launch.h).
template <class... KernelArgs, class... Args>
inline void launch_kernel(void (*kernel)(KernelArgs...), dim3 grid, dim3 block,
                          size_t dynamic_smem_bytes, void* stream, Args&&... args) {
  kernel<<<grid, block, dynamic_smem_bytes, static_cast<cudaStream_t>(stream)>>>(
      std::forward<Args>(args)...);
}

// The most dynamic shared memory one block of `kernel` may use on the current device: the
// opt-in limit (above the default 48 KiB) less the kernel's static shared memory. Raises the
// kernel's limit to that, once per (kernel, device); later calls only read a cache, so the
// first call should come before any CUDA graph capture (the ops' warm-up call does).
inline size_t max_dynamic_smem(const void* kernel) {
  static std::mutex mutex;
  static std::vector<std::tuple<const void*, int, size_t>> cache;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 0;
  std::lock_guard<std::mutex> lock(mutex);
  for (const auto& [k, d, limit] : cache)
    if (k == kernel && d == device) return limit;
  int optin = 0;
  cudaFuncAttributes attributes{};
  if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) !=
          cudaSuccess ||
      cudaFuncGetAttributes(&attributes, kernel) != cudaSuccess)
    return 0;
  const size_t limit = static_cast<size_t>(optin) - attributes.sharedSizeBytes;
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(limit)) != cudaSuccess)
    return 0;
  cache.emplace_back(kernel, device, limit);
  return limit;
}

template <class... KernelArgs>
inline size_t max_dynamic_smem(void (*kernel)(KernelArgs...)) {
  return max_dynamic_smem(reinterpret_cast<const void*>(kernel));
}

}  // namespace tetris::cuda

#define TETRIS_DYNAMIC_SMEM(T) (::tetris::cuda::dynamic_smem<T>())
#define TETRIS_UNROLL _Pragma("unroll")
#define TETRIS_LAUNCH(kernel, grid, block, smem_bytes, stream, ...) \
  ::tetris::cuda::launch_kernel(kernel, grid, block, smem_bytes, stream, __VA_ARGS__)

#elif defined(TETRIS_EMU_BUILD)
// csrc/emulator/emulator.h has defined all of the above and the CUDA built-ins the kernels use.
#else
#error "kernel headers compile under nvcc or after emulator/emulator.h"
#endif
