// select_prefixes on the CPU (docs/ops.md): the `budget` best chain positions over the batch by
// path probability, written back as each request's prefix length.
//
//   1. the probabilities each request may use, gathered position-major ([S][B], NaN where a
//      position is past the cap or the row is invalid), so that step 2 runs across requests in
//      wide vectors;
//   2. one score key per position: the running product of the clamped probabilities in double,
//      rounded to float32 (csrc/ops/select_prefixes/prefix_keys.h, the kernel's code); NaN = not
//      kept;
//   3. when more positions are kept than the budget, the budget-th largest key T and how many
//      keys equal to T fit: a bisection over the key (one vectorised count per bit) for the
//      batches vLLM steps have, the radix select of select (csrc/cpu_common/radix_select.h) beyond;
//   4. each request's length: its keys > T, plus its keys == T while the ties last, in request
//      order (the tie order (request, position) of select).
// Time O(B * S) (times 32 bits for small batches), memory a float, a uint32 and a double per
// position; no sort.
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "common/index_tensors.h"
#include "cpu_common/multiversion.h"
#include "cpu_common/radix_select.h"
#include "ops/select_prefixes/checks.h"
#include "ops/select_prefixes/prefix_keys.h"

namespace tetris::cpu {
namespace {

// Up to this many positions the cut is found by bisection (32 passes over the keys, each a
// vectorised count: faster than histograms for the few thousand positions of a vLLM step).
constexpr int64_t kBisectionMaxPositions = 1 << 15;

// Step 1: column[n * B + b] = probs[rows[b], n] for n < min(lengths[b], S), NaN elsewhere.
void gather_columns(const at::Tensor& probs, const at::Tensor& rows, const at::Tensor& lengths,
                    float* column) {
  const int64_t R = probs.size(0), S = probs.size(1), B = rows.size(0);
  const float* data = probs.data_ptr<float>();
  const int64_t stride_r = probs.stride(0), stride_n = probs.stride(1);
  const IndexMatrix row_of = index_matrix(rows), cap_of = index_matrix(lengths);
  constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t r = row_of(b);
    const int64_t limit = r >= 0 && r < R ? std::clamp<int64_t>(cap_of(b), 0, S) : 0;
    const float* row = data + (limit > 0 ? r * stride_r : 0);
    for (int64_t n = 0; n < limit; ++n) column[n * B + b] = row[n * stride_n];
    for (int64_t n = limit; n < S; ++n) column[n * B + b] = kNaN;
  }
}

// Step 2: the keys, position-major like the columns. Returns how many are kept.
TETRIS_CPU_MULTIVERSION
int64_t column_keys(const float* __restrict column, int64_t B, int64_t S, double* __restrict path,
                    uint32_t* __restrict keys) {
  std::fill(path, path + B, 1.0);
  int64_t kept = 0;
  for (int64_t n = 0; n < S; ++n) {
    uint32_t kept_here = 0;
    for (int64_t b = 0; b < B; ++b) {  // vectorised
      path[b] *= clamped_probability(column[n * B + b]);
      const uint32_t k = path_key(path[b]);
      keys[n * B + b] = k;
      kept_here += k != kNotKept;
    }
    kept += kept_here;
  }
  return kept;
}

TETRIS_CPU_MULTIVERSION
int64_t count_at_least(const uint32_t* __restrict keys, int64_t K, uint32_t threshold) {
  uint32_t count = 0;                                             // K < 2^31 (checked)
  for (int64_t i = 0; i < K; ++i) count += keys[i] >= threshold;  // vectorised
  return count;
}

// Step 3 for small batches: the largest T with count(keys >= T) >= budget, by bisection.
Cut bisection_cut(const uint32_t* keys, int64_t K, int64_t budget) {
  uint64_t low = kNotKept + 1;               // count(>= low) = kept > budget
  uint64_t high = uint64_t{kPosInfKey} + 1;  // count(>= high) = 0 < budget
  int64_t above = 0;                         // count(>= high)
  while (high - low > 1) {
    const uint64_t mid = low + (high - low) / 2;
    const int64_t count = count_at_least(keys, K, static_cast<uint32_t>(mid));
    if (count >= budget) {
      low = mid;
    } else {
      high = mid;
      above = count;
    }
  }
  return {static_cast<uint32_t>(low), budget - above};
}

// Step 3 for large batches: the radix select of select.
Cut radix_cut(const uint32_t* keys, int64_t K, int64_t budget) {
  TopHistogram top;
  top_histogram(keys, K, top);
  int64_t rank = budget;
  const uint32_t digit = digit_of_rank(top, rank);
  std::vector<uint32_t> bucket;
  bucket.reserve(top[digit]);
  for (int64_t i = 0; i < K; ++i) {
    if (keys[i] >> kTopShift == digit) bucket.push_back(keys[i]);
  }
  return cut_in_bucket(bucket, digit << kTopShift, rank);
}

// Step 4: lengths[b] = keys of request b above the cut, plus its share of the ties.
template <class T>
void write_lengths(const uint32_t* keys, int64_t B, int64_t S, Cut cut, T* lengths,
                   int64_t stride) {
  std::vector<int32_t> above(B, 0), equal(B, 0);
  for (int64_t n = 0; n < S; ++n) {
    const uint32_t* key = keys + n * B;
    for (int64_t b = 0; b < B; ++b) {  // vectorised
      above[b] += key[b] > cut.key;
      equal[b] += key[b] == cut.key;
    }
  }
  for (int64_t b = 0; b < B; ++b) {
    const int64_t ties = std::min<int64_t>(equal[b], cut.ties);
    cut.ties -= ties;
    lengths[b * stride] = static_cast<T>(above[b] + ties);
  }
}

void select_prefixes_cpu(const at::Tensor& probs, const at::Tensor& rows, const at::Tensor& lengths,
                         int64_t budget) {
  check_select_prefixes_args(probs, rows, lengths, budget);
  const int64_t S = probs.size(1), B = rows.size(0), K = B * S;
  if (B == 0) return;
  auto column = std::make_unique_for_overwrite<float[]>(std::max<int64_t>(K, 1));
  auto keys = std::make_unique_for_overwrite<uint32_t[]>(std::max<int64_t>(K, 1));
  auto path = std::make_unique_for_overwrite<double[]>(B);
  gather_columns(probs, rows, lengths, column.get());
  const int64_t kept = column_keys(column.get(), B, S, path.get(), keys.get());

  Cut cut{kNotKept, 0};  // everything kept fits: every key above kNotKept
  if (budget == 0) {
    cut = {kPosInfKey, 0};  // probabilities are <= 1: no key reaches +inf's
  } else if (kept > budget) {
    cut = K <= kBisectionMaxPositions ? bisection_cut(keys.get(), K, budget)
                                      : radix_cut(keys.get(), K, budget);
  }
  if (lengths.scalar_type() == at::kLong) {
    write_lengths(keys.get(), B, S, cut, lengths.data_ptr<int64_t>(), lengths.stride(0));
  } else {
    write_lengths(keys.get(), B, S, cut, lengths.data_ptr<int32_t>(), lengths.stride(0));
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(tetris, CPU, m) { m.impl("select_prefixes", &select_prefixes_cpu); }

}  // namespace tetris::cpu
