// Bit casts between float and uint32_t that compile the same in CUDA device code, host code
// and the CPU emulation harness (no <bit>, no unions).
#pragma once

#include <cstdint>
#include <cstring>

#include "host_device/host_device.h"

namespace tetris {

#if defined(__CUDA_ARCH__)
TETRIS_HD uint32_t float_as_bits(float x) { return __float_as_uint(x); }
TETRIS_HD float bits_as_float(uint32_t bits) { return __uint_as_float(bits); }
#else
// memcpy: the way host code may reinterpret an object's bytes without undefined behaviour.
template <class To, class From>
inline To copy_bits(From from) {
  static_assert(sizeof(To) == sizeof(From));
  To to;
  std::memcpy(&to, &from, sizeof(to));
  return to;
}
TETRIS_HD uint32_t float_as_bits(float x) { return copy_bits<uint32_t>(x); }
TETRIS_HD float bits_as_float(uint32_t bits) { return copy_bits<float>(bits); }
#endif

}  // namespace tetris
