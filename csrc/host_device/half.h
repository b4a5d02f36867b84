// float16 / bfloat16 bit patterns -> float, with integer operations only (plus one exact
// int -> float conversion for float16 subnormals), so that CPU code, CUDA kernels and the
// emulation harness read half-precision logits identically and without cuda_fp16.h or
// c10::Half. Exact for every input, including subnormals, infinities and NaN, and
// independent of flush-to-zero modes.
#pragma once

#include <cstdint>

#include "host_device/bits.h"
#include "host_device/host_device.h"

namespace tetris {

// bfloat16 is the top half of a float32.
TETRIS_HD float bfloat16_bits_to_float(uint16_t h) {
  return bits_as_float(static_cast<uint32_t>(h) << 16);
}

// IEEE binary16: 1 sign, 5 exponent (bias 15), 10 mantissa bits.
TETRIS_HD float half_bits_to_float(uint16_t h) {
  const uint32_t sign = (static_cast<uint32_t>(h) & 0x8000u) << 16;
  const uint32_t magnitude = static_cast<uint32_t>(h) & 0x7FFFu;
  uint32_t bits;
  if (magnitude >= 0x7C00u) {
    // Inf / NaN: all-ones exponent, mantissa (NaN payload) moved to the top.
    bits = 0x7F800000u | ((magnitude & 0x3FFu) << 13);
  } else if (magnitude >= 0x0400u) {
    // Normal: rebias the exponent from 15 to 127 (+112) and widen the mantissa.
    bits = (magnitude << 13) + (112u << 23);
  } else {
    // Zero or subnormal: the value is mantissa * 2^-24, exact in float32 (always normal).
    bits = float_as_bits(static_cast<float>(magnitude) * 5.9604644775390625e-08f);
  }
  return bits_as_float(sign | bits);
}

}  // namespace tetris
