// exp(x) for x <= 0 in branch-free float arithmetic that compilers vectorise (std::exp is a
// library call they cannot), for draft_cumprod's sum over the vocabulary. Cephes' expf: 2^n
// times a degree-7 polynomial on [-ln2/2, ln2/2], about 1 ulp. Inputs below -87 give
// exp(-87) ~ 1.6e-38 instead of a smaller number or 0: harmless in a sum whose largest term
// is exp(0) = 1. NaN is treated like -inf (callers detect NaN themselves), which keeps the
// float -> int conversion below defined.
#pragma once

#include <cstdint>

#include "hd/bits.h"

namespace tetris::cpu {

inline float fast_exp_nonpositive(float x) {
  x = x >= -87.0f ? x : -87.0f;  // keeps 2^n normal; NaN -> -87
  // n = round(x / ln2) by the 1.5 * 2^23 trick; r = x - n ln2 in two steps (Cody-Waite).
  const float shifter = 12582912.0f;
  const float n = (x * 1.44269504088896341f + shifter) - shifter;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t exponent = static_cast<int32_t>(n) + 127;  // 1 .. 127 for x in [-87, 0]
  return p * bits_as_float(static_cast<uint32_t>(exponent) << 23);
}

}  // namespace tetris::cpu
