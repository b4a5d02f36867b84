// draft_cumprod kernels (semantics: docs/ops.md; the CPU twin: csrc/ops/draft_cumprod/cpu.cpp).
//
//   1. token_logprob_kernel, one block per (b, n) row: one pass over the V logits (16-byte
//      vector loads, float32 / float16 / bfloat16) keeps an online softmax normaliser per
//      thread (running max and sum of exp(x - max)), merged by a block reduction; the token's
//      logit is read by thread 0 while the row streams in. The result is finished by the same
//      helper as on the CPU (csrc/ops/draft_cumprod/logsumexp.h).
//   2. cumulate_paths_kernel, one thread per request: cum[n] = token_logprob[n] + cum[parent]
//      in increasing n (parents come first), -inf off valid paths.
#pragma once

#include <cmath>
#include <cstdint>

#include "host_device/tree_slots.h"
#include "kernel_common/primitives.cuh"
#include "ops/draft_cumprod/logsumexp.h"
#include "ops/draft_cumprod/params.h"

namespace tetris::TETRIS_KERNEL_NS {

// The (b, n) candidate's own validity: its token is in [0, V) and its parent in [-1, n - 1].
__device__ __forceinline__ bool candidate_is_valid(const DraftCumprodParams& p, int64_t b,
                                                   int64_t n) {
  const int64_t token = p.tokens(b, n);
  const int64_t parent = p.parents.present() ? p.parents(b, n) : chain_parent(n);
  return token_in_vocab(token, p.vocab) && parent_index_valid(parent, n);
}

// Online softmax normaliser: the largest raw logit seen and the sum of
// exp((x - max) * inverse_temperature) (csrc/ops/draft_cumprod/logsumexp.h: the maximum stays
// unscaled so that the top term is exactly exp(0) = 1 whatever nvcc contracts). A NaN logit makes
// `sum` NaN (never `max`); -inf logits add nothing.
struct MaxSum {
  float max;
  float sum;
};

__device__ __forceinline__ MaxSum shfl_xor(MaxSum v, int lane_mask) {
  return {__shfl_xor_sync(kFullMask, v.max, lane_mask),
          __shfl_xor_sync(kFullMask, v.sum, lane_mask)};
}

// `sum` (taken at maximum `from`) rescaled to the maximum `to` >= from. Nothing but -inf
// (or NaN) yet: the sum is 0 or NaN as it stands ((-inf) * 0 would be NaN when the inverse
// temperature is 0).
__device__ __forceinline__ float rescaled_sum(float sum, float from, float to,
                                              float inverse_temperature) {
  return from == -INFINITY ? sum : sum * __expf((from - to) * inverse_temperature);
}

struct MergeMaxSum {
  float inverse_temperature;
  __device__ __forceinline__ MaxSum operator()(MaxSum a, MaxSum b) const {
    const float max = fmaxf(a.max, b.max);
    return {max, rescaled_sum(a.sum, a.max, max, inverse_temperature) +
                     rescaled_sum(b.sum, b.max, max, inverse_temperature)};
  }
};

// What each thread folds its share of the row into.
struct RowNormaliser {
  float inverse_temperature;
  MaxSum acc{-INFINITY, 0.0f};

  __device__ __forceinline__ void operator()(const float* logits, int count) {
    float group_max = -INFINITY;
    for (int i = 0; i < count; ++i)
      group_max = logits[i] > group_max ? logits[i] : group_max;  // NaN never wins
    if (group_max > acc.max) {
      acc.sum = rescaled_sum(acc.sum, acc.max, group_max, inverse_temperature);
      acc.max = group_max;
    }
    for (int i = 0; i < count; ++i) {  // NaN poisons the sum
      if (logits[i] != -INFINITY) acc.sum += __expf((logits[i] - acc.max) * inverse_temperature);
    }
  }
};

template <FloatType kType, int kThreads>
__global__ void __launch_bounds__(kThreads) token_logprob_kernel(DraftCumprodParams p) {
  using S = Storage<kType>;
  const int64_t row = blockIdx.x;
  const int64_t b = row / p.candidates, n = row % p.candidates;
  // The same for every thread of the block, so the early return skips no barrier.
  if (!candidate_is_valid(p, b, n)) {
    if (threadIdx.x == 0) p.token_logprobs[row] = -INFINITY;
    return;
  }
  const S* logits =
      static_cast<const S*>(p.logits) + b * p.logits_stride[0] + n * p.logits_stride[1];
  float token_logit = 0.0f;
  if (threadIdx.x == 0) token_logit = to_float<kType>(logits[p.tokens(b, n) * p.logits_stride[2]]);

  RowNormaliser normaliser{p.inverse_temperature};
  block_visit_row<kType, 4>(logits, p.vocab, p.logits_stride[2], normaliser);
  const MaxSum row_total = block_all_reduce(normaliser.acc, MergeMaxSum{p.inverse_temperature});

  if (threadIdx.x == 0) {
    // An infinite maximum (all -inf, or a +inf logit) gives NaN, as torch.log_softmax does.
    p.token_logprobs[row] =
        token_logprob_from_lse(token_logit, row_total.max, row_total.sum, p.inverse_temperature);
  }
}

__global__ void cumulate_paths_kernel(DraftCumprodParams p) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= p.batch) return;
  const float* token_logprobs = p.token_logprobs + b * p.candidates;
  float* cum = p.cum_logprobs + b * p.candidates;
  uint8_t* on_valid_path = p.on_valid_path + b * p.candidates;
  for (int64_t n = 0; n < p.candidates; ++n) {
    const int64_t parent = p.parents.present() ? p.parents(b, n) : n - 1;
    const bool valid = candidate_is_valid(p, b, n) && (parent < 0 || on_valid_path[parent]);
    on_valid_path[n] = valid;
    cum[n] = !valid ? -INFINITY : parent < 0 ? token_logprobs[n] : token_logprobs[n] + cum[parent];
  }
}

// Threads per row: enough for four 16-byte loads each in flight over the row, 32 to 256.
inline unsigned row_threads(int64_t V, int elements_per_pack) {
  unsigned threads = 32;
  while (threads < 256 && threads * 4 * elements_per_pack < V) threads *= 2;
  return threads;
}

template <FloatType kType>
inline void launch_token_logprobs(const DraftCumprodParams& p, void* stream) {
  const dim3 grid(static_cast<unsigned>(p.batch * p.candidates));
  const unsigned threads = row_threads(p.vocab, Pack16<Storage<kType>>::kCount);
  switch (threads) {
    case 32: TETRIS_LAUNCH((token_logprob_kernel<kType, 32>), grid, 32, 0, stream, p); break;
    case 64: TETRIS_LAUNCH((token_logprob_kernel<kType, 64>), grid, 64, 0, stream, p); break;
    case 128: TETRIS_LAUNCH((token_logprob_kernel<kType, 128>), grid, 128, 0, stream, p); break;
    default: TETRIS_LAUNCH((token_logprob_kernel<kType, 256>), grid, 256, 0, stream, p); break;
  }
}

// The launcher, compiled once per backend: kernel.cu wraps it as launch_draft_cumprod_cuda,
// kernel_emulated.cpp as launch_draft_cumprod_emulated (both declared in params.h).
inline void launch_draft_cumprod(const DraftCumprodParams& p, void* stream) {
  switch (p.logits_type) {
    case FloatType::kFloat32: launch_token_logprobs<FloatType::kFloat32>(p, stream); break;
    case FloatType::kFloat16: launch_token_logprobs<FloatType::kFloat16>(p, stream); break;
    case FloatType::kBFloat16: launch_token_logprobs<FloatType::kBFloat16>(p, stream); break;
  }
  constexpr unsigned kThreads = 128;
  const dim3 grid(static_cast<unsigned>((p.batch + kThreads - 1) / kThreads));
  TETRIS_LAUNCH(cumulate_paths_kernel, grid, kThreads, 0, stream, p);
}

}  // namespace tetris::TETRIS_KERNEL_NS
