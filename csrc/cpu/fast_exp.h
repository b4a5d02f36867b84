// exp(x) for x in [-87, 0] in branch-free float and integer arithmetic that compilers
// vectorise (std::exp is a library call they cannot), for draft_cumprod's sum over the
// vocabulary. Cephes' expf: 2^n times a degree-7 polynomial in r = x - n ln2, with
// r in [-ln2/2, ln2/2]; about 1 ulp. Callers clamp x to >= -87 (exp(-87) ~ 1.6e-38 is
// harmless in a sum whose largest term is exp(0) = 1); NaN gives NaN.
#pragma once

#include <cstdint>

#include "hd/bits.h"

namespace tetris::cpu {

// always_inline: the callers are compiled for several instruction sets (target_clones), and
// GCC would otherwise keep this as an out-of-line call that blocks vectorisation.
__attribute__((always_inline)) inline float fast_exp_clamped(float x) {
  // n = round(x / ln2) by adding 1.5 * 2^23: the sum's low mantissa bits hold n.
  const float shifter = 12582912.0f;
  const float shifted = x * 1.44269504088896341f + shifter;
  const float n = shifted - shifter;
  float r = x - n * 0.693359375f;  // x - n ln2 in two steps (Cody-Waite)
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // 2^n: biased exponent n + 127 (1 .. 127 for x in [-87, 0]) taken from the shifted bits.
  const uint32_t pow2_bits = (float_as_bits(shifted) + (127u - 0x4B400000u)) << 23;
  return p * bits_as_float(pow2_bits);
}

}  // namespace tetris::cpu
