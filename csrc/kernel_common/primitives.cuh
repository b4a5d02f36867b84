// Device helpers shared by the kernels: warp and block reductions, a block-wide exclusive
// scan, half-precision loads and the vectorised walk over a row. Written by hand (no CUB:
// the emulation harness runs this same text on the CPU, see docs/kernels.md).
//
// Block-level helpers contain __syncthreads(): every thread of the block must call them, and
// blockDim.x must be a multiple of 32 (whole warps; the launchers guarantee it).
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "host_device/half.h"
#include "host_device/index_matrix.h"
#include "kernel_common/backend.cuh"

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#endif

namespace tetris::TETRIS_KERNEL_NS {

inline constexpr unsigned kWarpSize = 32;
inline constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ unsigned lane_id() { return threadIdx.x % kWarpSize; }
__device__ __forceinline__ unsigned warp_id() { return threadIdx.x / kWarpSize; }
__device__ __forceinline__ unsigned num_warps() { return blockDim.x / kWarpSize; }

// Threads of a block for `work` items (slots, requests, chunks of tokens): whole warps covering
// them, at least one warp, at most `cap` (a multiple of 32).
inline unsigned threads_for(int64_t work, unsigned cap) {
  const int64_t threads = (work + kWarpSize - 1) / kWarpSize * kWarpSize;
  return static_cast<unsigned>(threads < kWarpSize ? kWarpSize : (threads > cap ? cap : threads));
}

// Neither infinite nor NaN (no <cmath> classification macros: they differ between nvcc and
// the host compiler).
__device__ __forceinline__ bool is_finite(float x) { return fabsf(x) < INFINITY; }

// --- Reductions ----------------------------------------------------------------------------

// The butterfly step of the reductions moves a value between lanes. Arithmetic types use the
// shuffle directly; a struct provides its own `shfl_xor(value, lane_mask)` overload next to
// its definition (found by argument-dependent lookup).
template <class T>
__device__ __forceinline__ T shfl_xor(T value, int lane_mask) {
  return __shfl_xor_sync(kFullMask, value, lane_mask);
}

// op over the 32 lanes of the warp; every lane gets the result. `op` must be commutative and
// associative up to the rounding the caller accepts (the combination order is fixed, so the
// result is deterministic).
template <class T, class Op>
__device__ __forceinline__ T warp_all_reduce(T value, Op op) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    value = op(value, shfl_xor(value, offset));
  return value;
}

// op over the whole block; every thread gets the result (warp results combined in warp order).
template <class T, class Op>
__device__ __forceinline__ T block_all_reduce(T value, Op op) {
  __shared__ T warp_results[kWarpSize];
  value = warp_all_reduce(value, op);
  if (lane_id() == 0) warp_results[warp_id()] = value;
  __syncthreads();
  T total = warp_results[0];
  for (unsigned w = 1; w < num_warps(); ++w) total = op(total, warp_results[w]);
  __syncthreads();  // warp_results may be reused by the next call
  return total;
}

struct Sum {
  template <class T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return a + b;
  }
};

// --- Scan ----------------------------------------------------------------------------------

template <class T>
struct ScanResult {
  T exclusive;  // sum of the values of the threads before this one (in threadIdx.x order)
  T total;      // sum over the block
};

template <class T>
__device__ __forceinline__ ScanResult<T> block_exclusive_sum(T value) {
  __shared__ T warp_totals[kWarpSize];
  T inclusive = value;
  for (unsigned delta = 1; delta < kWarpSize; delta *= 2) {
    const T before = __shfl_up_sync(kFullMask, inclusive, delta);
    if (lane_id() >= delta) inclusive += before;
  }
  if (lane_id() == kWarpSize - 1) warp_totals[warp_id()] = inclusive;
  __syncthreads();
  T earlier_warps = 0, total = 0;
  for (unsigned w = 0; w < num_warps(); ++w) {
    if (w < warp_id()) earlier_warps += warp_totals[w];
    total += warp_totals[w];
  }
  __syncthreads();  // warp_totals may be reused by the next call
  return {earlier_warps + inclusive - value, total};
}

// --- Loads ---------------------------------------------------------------------------------

// Element storage of a FloatType: float, or the 16 raw bits of a half / bfloat16.
template <FloatType kType>
using Storage = std::conditional_t<kType == FloatType::kFloat32, float, uint16_t>;

// One element as float32 (exact for every input). Device code converts half with the hardware
// instruction, the CPU with csrc/host_device/half.h: both are exact, so both give the same float.
template <FloatType kType>
__device__ __forceinline__ float to_float(Storage<kType> raw) {
  if constexpr (kType == FloatType::kFloat32) {
    return raw;
  } else if constexpr (kType == FloatType::kBFloat16) {
    return bfloat16_bits_to_float(raw);
  } else {
#if defined(__CUDA_ARCH__)
    return __half2float(__ushort_as_half(raw));
#else
    return half_bits_to_float(raw);
#endif
  }
}

// 16 bytes of elements, loaded with one vector instruction.
template <class S>
struct alignas(16) Pack16 {
  static constexpr int kCount = 16 / sizeof(S);
  S values[kCount];
};

// Visits this thread's share of a row of `n` elements that starts at `row` (element stride
// `stride`), as float32: visit(const float* values, int count) on groups of at most
// Pack16<S>::kCount values. Contiguous rows are read with 16-byte loads, kUnroll of them in
// flight per thread, from the first 16-byte aligned element; the elements before it (a row
// that is not aligned) and after the last whole vector (n not a multiple of the vector width)
// are read one by one, as are strided rows. Threads split the row in blockDim.x-wide stripes
// (coalesced).
template <FloatType kType, int kUnroll, class Visit>
__device__ __forceinline__ void block_visit_row(const Storage<kType>* row, int64_t n,
                                                int64_t stride, Visit& visit) {
  using S = Storage<kType>;
  using Pack = Pack16<S>;
  constexpr int kCount = Pack::kCount;
  const int64_t tid = threadIdx.x, threads = blockDim.x;
  if (stride != 1) {
    for (int64_t i = tid; i < n; i += threads) {
      const float x = to_float<kType>(row[i * stride]);
      visit(&x, 1);
    }
    return;
  }
  // Elements up to the first 16-byte boundary (tensors are at least element-aligned).
  const int64_t misaligned =
      static_cast<int64_t>(reinterpret_cast<uintptr_t>(row) % 16) / sizeof(S);
  const int64_t head = misaligned == 0 ? 0 : (n < kCount - misaligned ? n : kCount - misaligned);
  if (tid < head) {
    const float x = to_float<kType>(row[tid]);
    visit(&x, 1);
  }
  const Pack* packs = reinterpret_cast<const Pack*>(row + head);
  const int64_t num_packs = (n - head) / kCount;
  int64_t p = tid;
  for (; p + (kUnroll - 1) * threads < num_packs; p += kUnroll * threads) {
    Pack loaded[kUnroll];
    TETRIS_UNROLL
    for (int u = 0; u < kUnroll; ++u) loaded[u] = packs[p + u * threads];
    TETRIS_UNROLL
    for (int u = 0; u < kUnroll; ++u) {
      float x[kCount];
      TETRIS_UNROLL
      for (int c = 0; c < kCount; ++c) x[c] = to_float<kType>(loaded[u].values[c]);
      visit(x, kCount);
    }
  }
  for (; p < num_packs; p += threads) {
    const Pack loaded = packs[p];
    float x[kCount];
    TETRIS_UNROLL
    for (int c = 0; c < kCount; ++c) x[c] = to_float<kType>(loaded.values[c]);
    visit(x, kCount);
  }
  const int64_t tail_start = head + num_packs * kCount;
  if (tail_start + tid < n) {
    const float x = to_float<kType>(row[tail_start + tid]);
    visit(&x, 1);
  }
}

}  // namespace tetris::TETRIS_KERNEL_NS
