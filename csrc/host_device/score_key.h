// Order-preserving 32-bit keys of float scores, for selection by integer comparisons and
// radix histograms (select, on the CPU and in the kernels).
//
//   score_key(a) < score_key(b)  <=>  a < b      for all non-NaN floats a, b,
//
// with two normalisations that the select semantics need:
//   - NaN counts as -inf (so a NaN score is never eligible, and never poisons a min);
//   - -0.0 and +0.0 get the same key (they are equal scores, so they tie).
// Every key is >= kNegInfKey; eligible scores (> -inf) have keys > kNegInfKey, so 0 is free
// to mean "no candidate". min over keys is min over scores, which is what the effective score
// e = min(score, e[parent]) needs.
#pragma once

#include <cstdint>

#include "host_device/bits.h"
#include "host_device/host_device.h"

namespace tetris {

// score_key(-inf). Keys <= kNegInfKey are never eligible.
constexpr uint32_t kNegInfKey = 0x007FFFFFu;
// score_key(+inf): the largest key.
constexpr uint32_t kPosInfKey = 0xFF800000u;

// Branch-free (selects only), so that loops over it vectorise.
TETRIS_HD uint32_t score_key(float x) {
  uint32_t bits = float_as_bits(x);
  const bool is_nan = (bits & 0x7FFFFFFFu) > 0x7F800000u;
  bits = bits == 0x80000000u ? 0u : bits;  // -0.0 -> +0.0
  // Non-negative floats: set the sign bit (they order above all negatives, by magnitude).
  // Negative floats: flip every bit (larger magnitude -> smaller key).
  const uint32_t flip = static_cast<uint32_t>(static_cast<int32_t>(bits) >> 31) | 0x80000000u;
  return is_nan ? kNegInfKey : bits ^ flip;
}

// Inverse of score_key on its image (NaN comes back as -inf, -0.0 as +0.0).
TETRIS_HD float score_from_key(uint32_t key) {
  const uint32_t flip = (key & 0x80000000u) ? 0x80000000u : 0xFFFFFFFFu;
  return bits_as_float(key ^ flip);
}

}  // namespace tetris
