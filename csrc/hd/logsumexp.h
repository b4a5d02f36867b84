// The last step of draft_cumprod's token log-probability, shared by the CPU implementation
// and the kernels so that both finish the one-pass (online) softmax the same way.
#pragma once

#include <cmath>

#include "hd.h"

namespace tetris {

// log_softmax(x)[token] from the row maximum `max` of the scaled logits, the sum of
// exp(x - max) over the row, and the token's scaled logit x_token. The caller makes
// `sum_exp` NaN when the row holds a NaN; rows whose maximum is +inf or -inf give NaN here
// (inf - inf), as torch.log_softmax does.
TETRIS_HD float token_logprob_from_lse(float x_token, float max, float sum_exp) {
  return (x_token - max) - logf(sum_exp);
}

// 1 / temperature as the float that scales the logits (computed in double, rounded once).
TETRIS_HD float inverse_temperature(double temperature) {
  return static_cast<float>(1.0 / temperature);
}

}  // namespace tetris
