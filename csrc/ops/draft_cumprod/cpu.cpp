// draft_cumprod on the CPU (docs/ops.md):
//   token_logprobs[b,n] = log_softmax(logits[b,n] / T)[tokens[b,n]]
//   cum_logprobs[b,n]   = token_logprobs[b,n] + cum_logprobs[b, parent]   (0 at the root)
//
// Each (b, n) row is read once: chunks of kChunk logits go through an online max / sum-exp
// (float32, rescaling the running sum when the maximum grows), so no [B, N, V] intermediate
// exists. The chunk loop is written for the compiler to vectorise (an integer maximum, a
// branch-free exp) and is compiled for several x86 levels (cpu_common/multiversion.h).
// Rows run in parallel (at::parallel_for), then each request sums along its paths.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "common/index_tensors.h"
#include "cpu_common/fast_exp.h"
#include "cpu_common/multiversion.h"
#include "cpu_common/parents.h"
#include "host_device/bits.h"
#include "host_device/half.h"
#include "ops/draft_cumprod/checks.h"
#include "ops/draft_cumprod/logsumexp.h"

namespace tetris::cpu {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int64_t kLanes = 16;  // independent accumulators: one AVX-512 register
// Logits per online step: 8 KiB, stays in L1. The per-chunk work (horizontal reductions, the
// rescale) cost ~15% of the goal shape's time with 512; 4096 measured no better.
constexpr int64_t kChunk = 2048;

// Online softmax normaliser of one row of scaled logits.
struct RowLse {
  float max = -kInf;  // largest scaled logit so far
  float sum = 0.0f;   // sum of exp(x - max) so far
  bool saw_nan = false;
};

// Order-preserving int32 of a float (for non-NaN values: a < b <=> ordered(a) < ordered(b)).
// Integer max reductions vectorise; float ones do not (NaN and -0.0 rules) without
// -ffast-math. A positive NaN orders above +inf, a negative one below -inf.
__attribute__((always_inline)) inline int32_t ordered_int(float x) {
  const int32_t bits = static_cast<int32_t>(float_as_bits(x));
  return bits ^ ((bits >> 31) & 0x7FFFFFFF);
}

__attribute__((always_inline)) inline float from_ordered_int(int32_t key) {
  return bits_as_float(static_cast<uint32_t>(key ^ ((key >> 31) & 0x7FFFFFFF)));
}

// Adds `count` raw logits (scaled by inv_t inside the exp; count a multiple of kLanes, at most
// kChunk) to the running normaliser.
TETRIS_CPU_MULTIVERSION
void lse_add_chunk(RowLse& lse, const float* x, int64_t count, float inv_t) {
  // The integer keys also find NaNs of either sign (a positive NaN orders above +inf, a
  // negative one below -inf), so the exp loop below never sees one.
  int32_t chunk_max_key = ordered_int(-kInf);
  int32_t chunk_min_key = ordered_int(kInf);
  for (int64_t i = 0; i < count; ++i) {
    chunk_max_key = std::max(chunk_max_key, ordered_int(x[i]));
    chunk_min_key = std::min(chunk_min_key, ordered_int(x[i]));
  }
  if (chunk_max_key > ordered_int(kInf) || chunk_min_key < ordered_int(-kInf)) {
    lse.saw_nan = true;
    return;
  }
  // The maximum stays in raw logit units (csrc/ops/draft_cumprod/logsumexp.h: exp((x - max) *
  // inv_t) makes the top term exactly 1 whatever the compiler contracts).
  const float m = from_ordered_int(chunk_max_key);
  if (m > lse.max) {
    // Nothing but -inf so far: the sum is 0 (and (-inf) * inv_t would be NaN for inv_t = 0).
    if (lse.max != -kInf) lse.sum *= std::exp((lse.max - m) * inv_t);
    lse.max = m;
  }
  // All -inf so far: the terms are 0. (+inf: the result is NaN whatever follows.)
  if (!std::isfinite(lse.max)) return;
  // exp((x - max) * inv_t) for x <= max, in one pass over the chunk (still in L1 after the
  // maximum), clamped to fast_exp_clamped's domain; std::max(-87, y) also turns the NaN of a
  // -inf logit (or padding) times inv_t = 0 into -87, i.e. a term of ~1.6e-38 (a -inf logit
  // never gets probability). kLanes independent sums: one vector register.
  // Meanwhile the next kChunk logits (the rest of this row, or the next row of a contiguous
  // tensor) are prefetched, one cache line per vector, so that their load from memory overlaps
  // this compute-bound loop instead of stalling the next maximum pass. (A prefetch never
  // faults, so reading past the end of the tensor is harmless.)
  const float max = lse.max;
  float lane_sum[kLanes] = {};
  for (int64_t i = 0; i < count; i += kLanes) {
    __builtin_prefetch(x + kChunk + i, /*rw=*/0, /*locality=*/3);
    for (int64_t l = 0; l < kLanes; ++l) {
      lane_sum[l] += fast_exp_clamped(std::max(-87.0f, (x[i + l] - max) * inv_t));
    }
  }
  float sum = 0.0f;
  for (int64_t l = 0; l < kLanes; ++l) sum += lane_sum[l];
  lse.sum += sum;
}

// One logit as float32, whatever the storage type.
template <at::ScalarType kType>
float load_logit(const void* base, int64_t offset) {
  if constexpr (kType == at::kFloat) {
    return static_cast<const float*>(base)[offset];
  } else if constexpr (kType == at::kHalf) {
    return half_bits_to_float(static_cast<const uint16_t*>(base)[offset]);
  } else {
    return bfloat16_bits_to_float(static_cast<const uint16_t*>(base)[offset]);
  }
}

// log_softmax(row / T)[token] for one row of V logits starting at `row` (stride `stride`).
// Contiguous float32 chunks are read in place; anything else (half types, strides, a last
// chunk that is not a whole number of lanes) is converted into a buffer padded with -inf to
// whole lanes, which changes neither the maximum nor the sum.
template <at::ScalarType kType>
float row_token_logprob(const void* base, int64_t row, int64_t stride, int64_t V, int64_t token,
                        float inv_t) {
  const bool in_place = kType == at::kFloat && stride == 1;
  RowLse lse;
  alignas(64) float buffer[kChunk];
  for (int64_t v0 = 0; v0 < V; v0 += kChunk) {
    const int64_t len = std::min(kChunk, V - v0);
    const int64_t padded = (len + kLanes - 1) / kLanes * kLanes;
    const float* chunk = buffer;
    if (in_place && len == padded) {
      chunk = static_cast<const float*>(base) + row + v0;
    } else {
      for (int64_t i = 0; i < len; ++i)
        buffer[i] = load_logit<kType>(base, row + (v0 + i) * stride);
      std::fill(buffer + len, buffer + padded, -kInf);
    }
    lse_add_chunk(lse, chunk, padded, inv_t);
    if (lse.saw_nan) break;  // the row's answer is NaN
  }
  const float x_token = load_logit<kType>(base, row + token * stride);
  return token_logprob_from_lse(x_token, lse.max, lse.saw_nan ? NAN : lse.sum, inv_t);
}

template <class Parents>
bool is_valid_candidate(const IndexMatrix& tokens, const Parents& parents, int64_t b, int64_t n,
                        int64_t V) {
  const int64_t token = tokens(b, n);
  return token_in_vocab(token, V) && parent_index_valid(parents(b, n), n);
}

template <at::ScalarType kType, class Parents>
void token_logprobs_cpu(const at::Tensor& logits, const IndexMatrix& tokens, const Parents& parents,
                        float inv_t, float* out) {
  const int64_t N = logits.size(1);
  const int64_t V = logits.size(2);
  const int64_t stride_b = logits.stride(0);
  const int64_t stride_n = logits.stride(1);
  const int64_t stride_v = logits.stride(2);
  const void* base = logits.data_ptr();
  // About 32K logits per task, so that small batches stay on one thread.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(V, 1));
  at::parallel_for(0, logits.size(0) * N, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / N;
      const int64_t n = r % N;
      out[r] = is_valid_candidate(tokens, parents, b, n, V)
                   ? row_token_logprob<kType>(base, b * stride_b + n * stride_n, stride_v, V,
                                              tokens(b, n), inv_t)
                   : -kInf;
    }
  });
}

// cum[b,n] = token_logprobs[b,n] + cum[b,parent]; -inf unless every candidate on the path
// from the root is valid.
template <class Parents>
void cumulate_paths(const IndexMatrix& tokens, const Parents& parents, int64_t B, int64_t N,
                    int64_t V, const float* token_logprobs, float* cum) {
  const int64_t grain = std::max<int64_t>(1, 4096 / N);
  at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
    std::vector<char> on_valid_path(N);
    for (int64_t b = begin; b < end; ++b) {
      const float* lp = token_logprobs + b * N;
      float* c = cum + b * N;
      for (int64_t n = 0; n < N; ++n) {
        const int64_t parent = parents(b, n);
        const bool valid =
            is_valid_candidate(tokens, parents, b, n, V) && (parent < 0 || on_valid_path[parent]);
        on_valid_path[n] = valid;
        c[n] = !valid ? -kInf : parent < 0 ? lp[n] : lp[n] + c[parent];
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> draft_cumprod_cpu(const at::Tensor& logits,
                                                     const at::Tensor& tokens,
                                                     const std::optional<at::Tensor>& parents,
                                                     double temperature) {
  check_draft_cumprod_args(logits, tokens, parents, temperature);
  const int64_t B = logits.size(0);
  const int64_t N = logits.size(1);
  const int64_t V = logits.size(2);
  const auto options = logits.options().dtype(at::kFloat);
  at::Tensor token_logprobs = at::empty({B, N}, options);
  at::Tensor cum_logprobs = at::empty({B, N}, options);
  if (B * N == 0) return {token_logprobs, cum_logprobs};

  const IndexMatrix token_view = index_matrix(tokens);
  const float inv_t = inverse_temperature(temperature);
  float* token_out = token_logprobs.data_ptr<float>();
  float* cum_out = cum_logprobs.data_ptr<float>();
  visit_parents(parents, [&](const auto& parent_view) {
    switch (logits.scalar_type()) {
      case at::kFloat:
        token_logprobs_cpu<at::kFloat>(logits, token_view, parent_view, inv_t, token_out);
        break;
      case at::kHalf:
        token_logprobs_cpu<at::kHalf>(logits, token_view, parent_view, inv_t, token_out);
        break;
      default:  // kBFloat16 (checked above)
        token_logprobs_cpu<at::kBFloat16>(logits, token_view, parent_view, inv_t, token_out);
        break;
    }
    cumulate_paths(token_view, parent_view, B, N, V, token_out, cum_out);
  });
  return {token_logprobs, cum_logprobs};
}

}  // namespace

TORCH_LIBRARY_IMPL(tetris, CPU, m) { m.impl("draft_cumprod", &draft_cumprod_cpu); }

}  // namespace tetris::cpu
