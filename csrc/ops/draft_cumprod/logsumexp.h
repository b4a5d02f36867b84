// The last step of draft_cumprod's token log-probability, shared by the CPU implementation
// and the kernels so that both finish the one-pass (online) softmax the same way.
//
// Every backend keeps the row maximum in raw logit units and scales differences:
// exp((x - max) * inv_t), never exp(x * inv_t - max * inv_t). The top term is then exactly
// exp(0) = 1 whatever the compiler contracts (an FMA of x * inv_t - m keeps the product
// unrounded while m was rounded, which made the top term exp(rounding error): positive
// log-probabilities at small temperatures), and nothing overflows for tiny T.
#pragma once

#include <cmath>

#include "host_device/host_device.h"

namespace tetris {

// log_softmax(x * inv_t)[token] from the raw row maximum `max`, the sum of
// exp((x - max) * inv_t) over the row and the token's raw logit. The caller makes `sum_exp`
// NaN when the row holds a NaN; rows whose maximum is +inf or -inf give NaN (as
// torch.log_softmax does), a -inf token gives -inf at every temperature.
TETRIS_HD float token_logprob_from_lse(float x_token, float max, float sum_exp, float inv_t) {
  if (!(max > -INFINITY && max < INFINITY) || sum_exp != sum_exp) return NAN;  // NaN row
  if (x_token == -INFINITY) return -INFINITY;  // (-inf) * 0 would be NaN when inv_t is 0
  return (x_token - max) * inv_t - logf(sum_exp);
}

// 1 / temperature as the float that scales the logits (computed in double, rounded once).
TETRIS_HD float inverse_temperature(double temperature) {
  return static_cast<float>(1.0 / temperature);
}

}  // namespace tetris
