// Host versions of the CUDA integer / float intrinsics and atomics the kernels use.
// Atomics are plain read-modify-writes: fibers switch only at barriers and warp primitives,
// so nothing can interleave with them (emulator/fibers.h).
#pragma once

#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>

inline constexpr int warpSize = 32;

inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
inline float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
inline long long __double_as_longlong(double x) { return std::bit_cast<long long>(x); }
inline double __longlong_as_double(long long x) { return std::bit_cast<double>(x); }

inline int __clz(int x) { return std::countl_zero(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return std::countl_zero(static_cast<unsigned long long>(x)); }
inline int __popc(unsigned x) { return std::popcount(x); }
inline int __popcll(unsigned long long x) { return std::popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}

template <class T>
inline T __ldg(const T* p) {
  return *p;
}

// glibc declares (but does not export) __expf and __logf; spell the fast-math intrinsics as
// the accurate functions (kernels compare with CPU results within 1e-5 anyway).
#define __expf(x) ::expf(x)
#define __logf(x) ::logf(x)
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }

// CUDA's device min/max overloads (global namespace, same-type and int/unsigned mixes).
#define TETRIS_EMU_MINMAX(T)                       \
  inline T min(T a, T b) { return b < a ? b : a; } \
  inline T max(T a, T b) { return a < b ? b : a; }
TETRIS_EMU_MINMAX(int)
TETRIS_EMU_MINMAX(unsigned)
TETRIS_EMU_MINMAX(long)
TETRIS_EMU_MINMAX(unsigned long)
TETRIS_EMU_MINMAX(long long)
TETRIS_EMU_MINMAX(unsigned long long)
#undef TETRIS_EMU_MINMAX
inline float min(float a, float b) { return ::fminf(a, b); }
inline float max(float a, float b) { return ::fmaxf(a, b); }
inline double min(double a, double b) { return ::fmin(a, b); }
inline double max(double a, double b) { return ::fmax(a, b); }
inline unsigned min(int a, unsigned b) { return min(static_cast<unsigned>(a), b); }
inline unsigned min(unsigned a, int b) { return min(a, static_cast<unsigned>(b)); }
inline unsigned max(int a, unsigned b) { return max(static_cast<unsigned>(a), b); }
inline unsigned max(unsigned a, int b) { return max(a, static_cast<unsigned>(b)); }

inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_signal_fence(std::memory_order_seq_cst); }

// Atomics: the overload set of CUDA's (so that implicit conversions match), returning the old
// value.
#define TETRIS_EMU_ATOMIC(name, T, expr) \
  inline T name(T* address, T val) {     \
    T old = *address;                    \
    *address = (expr);                   \
    return old;                          \
  }
TETRIS_EMU_ATOMIC(atomicAdd, int, old + val)
TETRIS_EMU_ATOMIC(atomicAdd, unsigned, old + val)
TETRIS_EMU_ATOMIC(atomicAdd, unsigned long long, old + val)
TETRIS_EMU_ATOMIC(atomicAdd, float, old + val)
TETRIS_EMU_ATOMIC(atomicAdd, double, old + val)
TETRIS_EMU_ATOMIC(atomicSub, int, old - val)
TETRIS_EMU_ATOMIC(atomicSub, unsigned, old - val)
TETRIS_EMU_ATOMIC(atomicExch, int, val)
TETRIS_EMU_ATOMIC(atomicExch, unsigned, val)
TETRIS_EMU_ATOMIC(atomicExch, unsigned long long, val)
TETRIS_EMU_ATOMIC(atomicExch, float, val)
TETRIS_EMU_ATOMIC(atomicMin, int, val < old ? val : old)
TETRIS_EMU_ATOMIC(atomicMin, unsigned, val < old ? val : old)
TETRIS_EMU_ATOMIC(atomicMin, long long, val < old ? val : old)
TETRIS_EMU_ATOMIC(atomicMin, unsigned long long, val < old ? val : old)
TETRIS_EMU_ATOMIC(atomicMax, int, old < val ? val : old)
TETRIS_EMU_ATOMIC(atomicMax, unsigned, old < val ? val : old)
TETRIS_EMU_ATOMIC(atomicMax, long long, old < val ? val : old)
TETRIS_EMU_ATOMIC(atomicMax, unsigned long long, old < val ? val : old)
TETRIS_EMU_ATOMIC(atomicAnd, int, old& val)
TETRIS_EMU_ATOMIC(atomicAnd, unsigned, old& val)
TETRIS_EMU_ATOMIC(atomicAnd, unsigned long long, old& val)
TETRIS_EMU_ATOMIC(atomicOr, int, old | val)
TETRIS_EMU_ATOMIC(atomicOr, unsigned, old | val)
TETRIS_EMU_ATOMIC(atomicOr, unsigned long long, old | val)
TETRIS_EMU_ATOMIC(atomicXor, int, old ^ val)
TETRIS_EMU_ATOMIC(atomicXor, unsigned, old ^ val)
TETRIS_EMU_ATOMIC(atomicXor, unsigned long long, old ^ val)
TETRIS_EMU_ATOMIC(atomicInc, unsigned, old >= val ? 0u : old + 1u)
TETRIS_EMU_ATOMIC(atomicDec, unsigned, (old == 0u || old > val) ? val : old - 1u)
#undef TETRIS_EMU_ATOMIC

#define TETRIS_EMU_ATOMIC_CAS(T)                     \
  inline T atomicCAS(T* address, T compare, T val) { \
    T old = *address;                                \
    if (old == compare) *address = val;              \
    return old;                                      \
  }
TETRIS_EMU_ATOMIC_CAS(int)
TETRIS_EMU_ATOMIC_CAS(unsigned)
TETRIS_EMU_ATOMIC_CAS(unsigned long long)
TETRIS_EMU_ATOMIC_CAS(unsigned short)
#undef TETRIS_EMU_ATOMIC_CAS
