// Per-element rules of verify_sampling, shared by the CPU implementation and the kernel so that
// both make the same float32 decisions (docs/ops.md, "verify_sampling").
//
// p is the working target distribution at the current slot, unnormalised; `mass` is sum(p)
// (float32, summed in token order on the CPU). q is the draft distribution the children of the
// current slot were sampled from.
#pragma once

#include <cfloat>
#include <cstdint>

#include "host_device/host_device.h"
#include "host_device/tree_slots.h"

namespace tetris {

// The probability a value stands for: negative, NaN and infinite values count as 0, so that
// no invalid value can poison a sum or be sampled.
TETRIS_HD float prob_weight(float p) { return (p > 0.f && p <= FLT_MAX) ? p : 0.f; }

// Product rounded on its own: nvcc would otherwise fuse `a - b * c` into one fma, which
// rounds differently from the CPU.
TETRIS_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

// Child x drawn from q: accepted with probability min(1, (p(x) / mass) / q(x)), i.e. when
// u * q(x) * mass < p(x). With a normalised p (mass 1) this is FlashInfer's u * q(x) < p(x).
TETRIS_HD bool accept_drafted(float u, float q_x, float p_x, float mass) {
  return mul_rn(mul_rn(u, q_x), mass) < p_x;
}

// After rejecting a drafted child: p <- max(p - mass * q, 0), proportional to the residual
// normalise(max(p / mass - q, 0)) the next child (or the final sample) must see.
TETRIS_HD float residual_drafted(float p_t, float q_t, float mass) {
  return prob_weight(p_t - mul_rn(mass, q_t));
}

// Child x chosen deterministically (no draft_probs): accepted with probability p(x) / mass;
// after a rejection p(x) <- 0.
TETRIS_HD bool accept_deterministic(float u, float p_x, float mass) {
  return mul_rn(u, mass) < p_x;
}

// Inverse CDF: the sample is the first token whose running sum exceeds this threshold.
TETRIS_HD float sample_threshold(float u0, float mass) { return mul_rn(u0, mass); }

}  // namespace tetris
