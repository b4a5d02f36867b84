// What kernel source sees of the machine it runs on. Kernel headers (csrc/kernels/*.cuh)
// include this and nothing backend-specific, so the same text compiles
//   - under nvcc, for the GPU (csrc/cuda/*.cu), into namespace tetris::cuda, and
//   - under the host compiler with the CPU emulation harness (csrc/emu/*.cpp, which include
//     emu/emu.h first), into namespace tetris::emu.
// Each launcher is a plain function `launch_<op>(TETRIS_BACKEND_TAG, const Params&, void* stream)`
// declared in csrc/kernels/<op>.h and defined once per backend by the .cu / emu .cpp that
// includes the kernel header.
#pragma once

#include "hd.h"
#include "kernels/tags.h"

#if defined(__CUDACC__)
#include <cuda_runtime.h>
#include <cstdint>
#define TETRIS_KERNEL_NS cuda
#define TETRIS_BACKEND_TAG ::tetris::CudaTag
// Dynamic shared memory: the emulator cannot spell `extern __shared__`, hence this accessor.
#define TETRIS_DYNAMIC_SMEM(T) \
  ([]() -> T* { extern __shared__ __align__(16) unsigned char tetris_dynamic_smem[]; \
                return reinterpret_cast<T*>(tetris_dynamic_smem); }())
// The triple-chevron launch on the caller's stream; the emulator runs the grid on the CPU.
#define TETRIS_LAUNCH(kernel, grid, block, smem_bytes, stream, ...) \
  kernel<<<(grid), (block), (smem_bytes), static_cast<cudaStream_t>(stream)>>>(__VA_ARGS__)
#elif defined(TETRIS_EMU_BUILD)
// csrc/emu/emu.h has defined TETRIS_KERNEL_NS (emu), TETRIS_BACKEND_TAG,
// TETRIS_DYNAMIC_SMEM, TETRIS_LAUNCH and the CUDA built-ins the kernels use.
#else
#error "kernel headers compile under nvcc or after emu/emu.h"
#endif
