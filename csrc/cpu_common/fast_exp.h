// exp(x) for x in [-87, 0] in branch-free float and integer arithmetic that compilers
// vectorise (std::exp is a library call they cannot), for draft_cumprod's sum over the
// vocabulary. 2^n times a degree-5 polynomial in r = x - n ln2, r in [-ln2/2, ln2/2]:
// 1 + r + r^2 q(r), q of degree 3 fitted (minimax, linear programming on 4001 points) to the
// relative error of exp. At most 1.8e-7 relative over [-87, 0] in float32 (about 2 ulp,
// against 1 ulp for Cephes' degree 7, which costs two more FMAs per element): far inside the
// 2e-5 the op promises, since the sum's relative error becomes an absolute error of the
// log-probability. Callers clamp x to >= -87 (exp(-87) ~ 1.6e-38 is
// harmless in a sum whose largest term is exp(0) = 1) and never pass NaN (the result would be
// garbage, not NaN: 2^n is applied by an integer add to the exponent bits).
//
// Written for the fewest vector operations per element (about 12; the loop that sums these is
// compute bound): a one-step reduction with an FMA, Horner to the end, and 2^n added to the
// exponent field instead of a multiply.
#pragma once

#include <cstdint>

#include "host_device/bits.h"

namespace tetris::cpu {

// always_inline: the callers are compiled for several instruction sets (target_clones), and
// GCC would otherwise keep this as an out-of-line call that blocks vectorisation.
__attribute__((always_inline)) inline float fast_exp_clamped(float x) {
  // n = round(x / ln2) by adding 1.5 * 2^23: the sum's low mantissa bits hold n.
  const float shifter = 12582912.0f;
  const float shifted = x * 1.44269504088896341f + shifter;
  const float n = shifted - shifter;
  // r = x - n ln2 in one step: with an FMA, n * ln2 is not rounded, leaving ln2's rounding in
  // float (2e-9) times |n| (without one, ~4e-8 |n|): a relative error of that term, which only
  // grows with |n|, i.e. for terms below 2^-|n| of the row's largest.
  const float r = x - n * 0.693147181f;
  float p = 8.3147194e-3f;
  p = p * r + 4.1890208e-2f;
  p = p * r + 1.6667090e-1f;
  p = p * r + 4.9999231e-1f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  // 2^n: the shifted sum's bits are 0x4B400000 + n, and shifting them left by 23 leaves
  // exactly n << 23 (mod 2^32), which adds n to p's biased exponent. p is in [0.7, 1.42] and
  // n >= -126 (x >= -87), so the exponent stays >= 1 (no denormals, no wrap-around).
  const uint32_t pow2_n_exponent = float_as_bits(shifted) << 23;
  return bits_as_float(float_as_bits(p) + pow2_n_exponent);
}

}  // namespace tetris::cpu
