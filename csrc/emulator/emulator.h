// The CPU emulation harness: include this, then a kernel header (csrc/ops/<op>/kernel.cuh), and
// the CUDA kernel text compiles with the host compiler and runs on the CPU.
//
//   emulator/types.h       dim3, uint3 and the vector types (uint4, float4, ...)
//   emulator/intrinsics.h  bit / float intrinsics, min / max, atomics
//   emulator/fibers.h      the scheduler: threads as fibers, blocks in turn, __syncthreads
//   emulator/warp.h        warp shuffles and votes with lockstep semantics
//
// Header-only, so a standalone program (tests/sanitize/*.cpp) needs nothing else. The design
// and its limits are in docs/kernels.md.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>

#include "emulator/fibers.h"
#include "emulator/intrinsics.h"
#include "emulator/types.h"
#include "emulator/warp.h"

#define TETRIS_EMU_BUILD 1
#define TETRIS_KERNEL_NS emu

// CUDA's declaration specifiers. Kernels are `inline` so that a kernel header may be
// included by several translation units (the library's and a sanitizer driver's).
#define __global__ inline
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// One copy per OS thread, shared by the fibers of the block running there. Never write
// `static __shared__` (it would read `static static`).
#define __shared__ static thread_local

// CUDA's built-in variables, as the state of the running fiber and its launch.
#define threadIdx (::tetris::emu_rt::current_fiber().thread_idx)
#define blockIdx (::tetris::emu_rt::current_launch().block_idx)
#define blockDim (::tetris::emu_rt::current_launch().block_dim)
#define gridDim (::tetris::emu_rt::current_launch().grid_dim)

inline void __trap() { ::tetris::emu_rt::fail("__trap() called"); }

#define TETRIS_UNROLL

// Dynamic shared memory: the bytes passed to the launch, one buffer per launch.
#define TETRIS_DYNAMIC_SMEM(T) (reinterpret_cast<T*>(::tetris::emu_rt::dynamic_smem()))

namespace tetris::emu {

// The launch: converts the arguments once to the kernel's parameter types (as the CUDA
// runtime copies them), then every thread of every block calls the kernel with its own copy.
// `stream` is ignored: the grid has finished when this returns.
template <class... KernelArgs, class... Args>
inline void launch_kernel(void (*kernel)(KernelArgs...), dim3 grid, dim3 block,
                          size_t dynamic_smem_bytes, void* /*stream*/, Args&&... args) {
  static_assert(sizeof...(KernelArgs) == sizeof...(Args), "wrong number of kernel arguments");
  using Params = std::tuple<std::decay_t<KernelArgs>...>;
  struct Call {
    void (*kernel)(KernelArgs...);
    Params params;
    static void run(void* self) {
      auto* call = static_cast<Call*>(self);
      std::apply(call->kernel, call->params);
    }
  } call{kernel, Params(std::forward<Args>(args)...)};
  ::tetris::emu_rt::run_grid(grid, block, dynamic_smem_bytes, &Call::run, &call);
}

// Dynamic shared memory a kernel may use: as on an H100 (227 KiB per block) less a typical
// kernel's static shared memory, so that kernels that choose between shared and global
// memory by size take the same path here as there.
template <class... KernelArgs>
inline size_t max_dynamic_smem(void (*)(KernelArgs...)) {
  return 227 * 1024 - 16 * 1024;
}

}  // namespace tetris::emu

// A kernel name with template arguments goes in parentheses: TETRIS_LAUNCH((k<T, 256>), ...).
#define TETRIS_LAUNCH(kernel, grid, block, smem_bytes, stream, ...) \
  ::tetris::emu::launch_kernel(kernel, grid, block, smem_bytes, stream, __VA_ARGS__)
