// Bit casts between float and uint32_t that compile the same in CUDA device code, host code
// and the CPU emulation harness (no <bit>, no unions).
#pragma once

#include <cstdint>
#include <cstring>

#include "host_device/host_device.h"

namespace tetris {

TETRIS_HD uint32_t float_as_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return bits;
#endif
}

TETRIS_HD float bits_as_float(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float x;
  std::memcpy(&x, &bits, sizeof(x));
  return x;
#endif
}

}  // namespace tetris
