// The score keys of one request in select_prefixes (docs/ops.md), shared by the CPU op and the
// kernel so that both compute the same keys bit for bit.
//
// Each per-position probability is clamped to [0, 1] (NaN stays NaN), the running product is
// kept in double in chain order, and each position's score is that product rounded to float32:
// exactly what torch.cumprod gives for a float32 tensor on the CPU (it accumulates in double),
// and a path probability that never increases along the chain, so the kept positions of a
// request are a prefix and its keys never increase.
#pragma once

#include <cstdint>

#include "host_device/host_device.h"
#include "host_device/score_key.h"

namespace tetris {

// Key of a position that does not take part (past the cap, a NaN on its path, a bad row).
// Every eligible key is > kNegInfKey > 0.
constexpr uint32_t kNotKept = 0;

TETRIS_HD double clamped_probability(float p) {
  // Comparisons with NaN are false, so a NaN passes through and poisons the product.
  return p > 1.0f ? 1.0 : (p < 0.0f ? 0.0 : static_cast<double>(p));
}

// The key of a position whose running product is `path`: the product rounded to float32, or
// kNotKept when it is NaN.
TETRIS_HD uint32_t path_key(double path) {
  const uint32_t k = score_key(static_cast<float>(path));  // NaN -> kNegInfKey
  return k > kNegInfKey ? k : kNotKept;
}

// Writes key[0..S) for the request whose probabilities are row[n * stride] (row == nullptr: an
// invalid row, nothing kept) and whose positions n >= cap do not take part. Returns how many
// positions are kept (a prefix).
TETRIS_HD int64_t prefix_keys(const float* row, int64_t stride, int64_t S, int64_t cap,
                              uint32_t* key) {
  const int64_t limit = row == nullptr ? 0 : (cap < 0 ? 0 : (cap < S ? cap : S));
  double path = 1.0;
  int64_t kept = 0;
  for (int64_t n = 0; n < S; ++n) {
    uint32_t k = kNotKept;
    if (n < limit) {
      path *= clamped_probability(row[n * stride]);
      k = path_key(path);
    }
    key[n] = k;
    kept += k != kNotKept;
  }
  return kept;
}

}  // namespace tetris
