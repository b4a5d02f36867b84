// TETRIS_HD marks the small per-element helpers that the CPU implementations and the CUDA
// kernels share (csrc/host_device/*.h), so that both paths compute the same values the same way.
#pragma once

#if defined(__CUDACC__)
#define TETRIS_HD __host__ __device__ __forceinline__
#else
#define TETRIS_HD inline
#endif
