// select on the CPU: the TETRIS greedy over the whole batch (docs/ops.md).
//
// The walk "eligible candidates in the order (e desc, b asc, n asc), each taken while the
// budget and its request's cap allow" equals: keep the candidates whose rank inside their
// request (e desc, n asc) is below the cap, then take the first `budget` kept candidates in the
// global order. So the op never sorts the batch:
//   1. score keys (order-preserving uint32, csrc/host_device/score_key.h), then per request the
//      effective keys (a min along each path), eligibility and the cap (a partial selection
//      inside the request; for chains a prefix);
//   2. when more candidates are kept than the budget, a histogram of the top 11 key bits names
//      the bucket that holds the budget-th best key. One pass writes `selected` and `counts`
//      for every candidate outside that bucket and lists those inside it in flat (b, n) order;
//   3. a radix select over the (few) listed keys finds the cut key T; keys > T are taken, and
//      the first ones (in flat order, which is the tie order b asc, n asc) equal to T.
// Memory: one uint32 key per candidate; time: O(B * N), plus O(N log N) per capped tree.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "common/index_tensors.h"
#include "cpu_common/multiversion.h"
#include "cpu_common/parents.h"
#include "cpu_common/radix_select.h"
#include "host_device/score_key.h"
#include "ops/select/checks.h"

namespace tetris::cpu {
namespace {

// Key of a candidate that is not kept (ineligible, or over its request's cap). Every kept key
// is > kNegInfKey, so its top digit is never 0.
constexpr uint32_t kDropped = 0;

// score_key of every score, in flat (b, n) order.
TETRIS_CPU_MULTIVERSION
void score_keys(const float* scores, int64_t B, int64_t N, int64_t stride_b, int64_t stride_n,
                uint32_t* __restrict keys) {
  if (stride_n == 1 && stride_b == N) {
    for (int64_t i = 0; i < B * N; ++i) keys[i] = score_key(scores[i]);  // vectorised
    return;
  }
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t n = 0; n < N; ++n)
      keys[b * N + n] = score_key(scores[b * stride_b + n * stride_n]);
  }
}

// Turns the score keys of chains into effective keys: the running minimum along each chain, so
// a NaN score drops the rest of its chain; then kDropped below `min_key`. Dropping at once is
// exact: keys only decrease along a path. Returns the number of eligible candidates.
//
// One chain at a time is a serial min-compare chain per candidate (the op's largest cost at
// B = 256, N = 16). For N a power of two the minima come from flat passes over the whole batch
// instead, which vectorise: after the step with shift s, every key is the minimum over the 2s
// keys of its request ending at it (one step per bit of N).
inline void prefix_min_step(const uint32_t* __restrict from, uint32_t* __restrict to, int64_t total,
                            int64_t N, int64_t s) {
  for (int64_t i = 0; i < s; ++i) to[i] = from[i];
  for (int64_t i = s; i < total; ++i)
    to[i] = (i & (N - 1)) >= s ? std::min(from[i], from[i - s]) : from[i];
}

TETRIS_CPU_MULTIVERSION
int64_t chain_effective_keys(int64_t B, int64_t N, uint32_t min_key, uint32_t* __restrict keys,
                             uint32_t* __restrict scratch) {
  const int64_t total = B * N;
  if ((N & (N - 1)) != 0) {
    for (int64_t b = 0; b < B; ++b) {
      uint32_t path = kPosInfKey;
      for (int64_t n = b * N; n < (b + 1) * N; ++n) {
        path = std::min(path, keys[n]);
        keys[n] = path;
      }
    }
  } else {
    uint32_t* from = keys;
    uint32_t* to = scratch;
    for (int64_t s = 1; s < N; s *= 2) {
      prefix_min_step(from, to, total, N, s);
      std::swap(from, to);
    }
    if (from != keys) std::copy(from, from + total, keys);  // an odd number of steps
  }
  int64_t eligible = 0;
  for (int64_t i = 0; i < total; ++i) {
    const bool keep = keys[i] >= min_key;
    keys[i] = keep ? keys[i] : kDropped;
    eligible += keep;
  }
  return eligible;
}

// The same for one request of a tree: key[n] = min(key[n], key[parent]), so a NaN score or an
// invalid parent (key kDropped, below every key) drops the whole subtree. Returns the number of
// eligible candidates.
template <class Parents>
int64_t tree_effective_keys(const Parents& parents, int64_t b, int64_t N, uint32_t min_key,
                            uint32_t* key) {
  int64_t eligible = 0;
  for (int64_t n = 0; n < N; ++n) {
    const int64_t parent = parents(b, n);
    uint32_t k = key[n];
    if (!parent_index_valid(parent, n)) {
      k = kDropped;
    } else if (parent >= 0) {
      k = std::min(k, key[parent]);
    }
    if (k < min_key) k = kDropped;
    key[n] = k;
    eligible += k != kDropped;
  }
  return eligible;
}

// Keeps the `cap` best eligible candidates of one request (e desc, n asc). Eligible sets are
// ancestor-closed, so for chains the best `cap` are the first `cap`.
template <class Parents>
void apply_cap(int64_t N, int64_t cap, uint32_t* key, std::vector<uint64_t>& scratch) {
  if constexpr (Parents::kIsChain) {
    std::fill(key + cap, key + N, kDropped);
  } else {
    if (cap == 0) {
      std::fill(key, key + N, kDropped);
      return;
    }
    // Rank key: score key above, ~n below (the smaller n wins a tie); all distinct.
    auto rank_key = [&](int64_t n) {
      return (uint64_t{key[n]} << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(n));
    };
    scratch.clear();
    for (int64_t n = 0; n < N; ++n) {
      if (key[n] != kDropped) scratch.push_back(rank_key(n));
    }
    std::nth_element(scratch.begin(), scratch.begin() + (cap - 1), scratch.end(),
                     std::greater<uint64_t>());
    const uint64_t last_kept = scratch[cap - 1];
    for (int64_t n = 0; n < N; ++n) {
      if (rank_key(n) < last_kept) key[n] = kDropped;
    }
  }
}

// Pass 1 over all requests: the kept keys. Returns the number of kept candidates.
template <class Parents>
int64_t kept_keys(const at::Tensor& scores, const Parents& parents,
                  const std::optional<at::Tensor>& max_per_request, uint32_t min_key,
                  uint32_t* keys) {
  const int64_t B = scores.size(0);
  const int64_t N = scores.size(1);
  score_keys(scores.data_ptr<float>(), B, N, scores.stride(0), scores.stride(1), keys);
  const IndexMatrix caps = index_matrix(max_per_request);
  std::vector<uint64_t> scratch;
  if constexpr (Parents::kIsChain) {
    auto buffer = std::make_unique_for_overwrite<uint32_t[]>(B * N);
    const int64_t eligible = chain_effective_keys(B, N, min_key, keys, buffer.get());
    if (!caps.present()) return eligible;  // no cap: every eligible candidate is kept
  }
  int64_t kept = 0;
  for (int64_t b = 0; b < B; ++b) {
    uint32_t* key = keys + b * N;
    int64_t eligible;
    if constexpr (Parents::kIsChain) {
      eligible = std::count_if(key, key + N, [](uint32_t k) { return k != kDropped; });
    } else {
      eligible = tree_effective_keys(parents, b, N, min_key, key);
    }
    const int64_t cap = caps.present() ? std::max<int64_t>(caps(b), 0) : N;
    if (eligible > cap) apply_cap<Parents>(N, cap, key, scratch);
    kept += std::min(eligible, cap);
  }
  return kept;
}

// top_histogram (csrc/cpu_common/radix_select.h) compiled for each vector width: its merge of
// the sub-histograms (2048 bins) vectorises; select_cpu itself is built for baseline x86-64.
TETRIS_CPU_MULTIVERSION
void wide_top_histogram(const uint32_t* keys, int64_t count, TopHistogram& top) {
  top_histogram(keys, count, top);
}

// Pass 2: selected = (top digit > take_above) and the counts, for every candidate; lists (in
// flat order) the candidates whose top digit is list_digit. Returns how many were listed.
TETRIS_CPU_MULTIVERSION
int64_t write_outputs(const uint32_t* __restrict keys, int64_t B, int64_t N, bool is_chain,
                      uint32_t take_above, uint32_t list_digit, uint8_t* __restrict selected,
                      int32_t* __restrict counts, int64_t* __restrict listed_index) {
  // Loops over bytes vectorise 16 to 64 candidates at a time: flat, not per request.
  for (int64_t i = 0; i < B * N; ++i) selected[i] = (keys[i] >> kTopShift) > take_above;
  int64_t listed = 0;
  for (int64_t b = 0; b < B; ++b) {
    const uint32_t* key = keys + b * N;
    int32_t count = 0;
    int32_t in_bucket = 0;
    for (int64_t n = 0; n < N; ++n) {  // vectorised
      const uint32_t digit = key[n] >> kTopShift;
      count += digit > take_above;
      in_bucket += digit == list_digit;
    }
    counts[b] = count;
    if (in_bucket == 0) continue;
    if (is_chain) {
      // Keys never increase along a chain: the bucket is the run after the `count` taken.
      for (int64_t n = count; n < count + in_bucket; ++n) listed_index[listed++] = b * N + n;
    } else {
      for (int64_t n = 0; n < N; ++n) {
        listed_index[listed] = b * N + n;  // branch-free listing
        listed += key[n] >> kTopShift == list_digit;
      }
    }
  }
  return listed;
}

std::tuple<at::Tensor, at::Tensor> select_cpu(const at::Tensor& scores, int64_t budget,
                                              const std::optional<at::Tensor>& parents,
                                              const std::optional<at::Tensor>& max_per_request,
                                              std::optional<double> min_score) {
  check_select_args(scores, budget, parents, max_per_request, min_score);
  const int64_t B = scores.size(0);
  const int64_t N = scores.size(1);
  at::Tensor selected = at::empty({B, N}, scores.options().dtype(at::kBool));
  at::Tensor counts = at::empty({B}, scores.options().dtype(at::kInt));
  bool* selected_out = selected.data_ptr<bool>();
  int32_t* counts_out = counts.data_ptr<int32_t>();
  if (B * N == 0) {
    std::fill(counts_out, counts_out + B, 0);
    return {selected, counts};
  }

  // 1. Kept keys.
  auto keys = std::make_unique_for_overwrite<uint32_t[]>(B * N);
  const uint32_t min_key = select_min_eligible_key(min_score);
  const int64_t kept = visit_parents(parents, [&](const auto& parent_view) {
    return kept_keys(scores, parent_view, max_per_request, min_key, keys.get());
  });

  // 2. Everything kept fits: take every kept key (digit > 0). No budget: take nothing.
  // Otherwise the budget-th best key lies in bucket `cut_digit` of the top-digit histogram:
  // take the digits above it and list the bucket's candidates.
  uint32_t take_above = 0;
  uint32_t list_digit = kNoDigit;
  int64_t rank = budget;
  int64_t bucket_size = 0;
  if (budget == 0) {
    take_above = kNoDigit;
  } else if (kept > budget) {
    TopHistogram top;
    wide_top_histogram(keys.get(), B * N, top);
    take_above = list_digit = digit_of_rank(top, rank);
    bucket_size = top[list_digit];
  }
  // +1: the listing writes one slot past the last listed candidate.
  auto bucket_index = std::make_unique_for_overwrite<int64_t[]>(bucket_size + 1);
  const int64_t listed =
      write_outputs(keys.get(), B, N, !parents.has_value(), take_above, list_digit,
                    reinterpret_cast<uint8_t*>(selected_out), counts_out, bucket_index.get());
  if (listed == 0) return {selected, counts};

  // 3. The cut inside the bucket; ties at the cut go in flat (b, n) order.
  std::vector<uint32_t> bucket(listed);
  for (int64_t i = 0; i < listed; ++i) bucket[i] = keys[bucket_index[i]];
  Cut cut = cut_in_bucket(bucket, list_digit << kTopShift, rank);
  for (int64_t i = 0; i < listed; ++i) {
    bool take = bucket[i] > cut.key;
    if (bucket[i] == cut.key && cut.ties > 0) {
      take = true;
      --cut.ties;
    }
    if (take) {
      selected_out[bucket_index[i]] = true;
      ++counts_out[bucket_index[i] / N];
    }
  }
  return {selected, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(tetris, CPU, m) { m.impl("select", &select_cpu); }

}  // namespace tetris::cpu
