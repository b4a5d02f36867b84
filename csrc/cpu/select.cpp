// select on the CPU: the TETRIS greedy over the whole batch (docs/ops.md).
//
// The walk "eligible candidates in the order (e desc, b asc, n asc), each taken while the
// budget and its request's cap allow" equals: keep the candidates whose rank inside their
// request (e desc, n asc) is below the cap, then take the first `budget` kept candidates in the
// global order. So the op never sorts:
//   1. per request: effective-score keys (order-preserving uint32, csrc/hd/score_key.h),
//      eligibility, the cap (a partial selection inside the request, trees only), and a
//      histogram of the top key bits of the kept candidates;
//   2. a radix select over the kept keys finds the budget-th largest key T and how many of
//      the candidates with key == T fit (those come first in flat index order = b, n order);
//   3. one pass writes `selected` and `counts`.
// Memory: one uint32 key per candidate; time: O(B * N) plus O(N log N) per capped tree.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "args/select.h"
#include "cpu/index_view.h"
#include "hd/score_key.h"

namespace tetris::cpu {
namespace {

// Key of a candidate that is not kept (ineligible, or over its request's cap).
constexpr uint32_t kDropped = 0;

// Radix select digits: 11 + 11 + 10 bits of the 32-bit key.
constexpr int kTopBits = 11;
constexpr int kTopShift = 32 - kTopBits;
using TopHistogram = std::array<int64_t, 1 << kTopBits>;

class ScoreView {
 public:
  explicit ScoreView(const at::Tensor& scores)
      : data_(scores.data_ptr<float>()), stride0_(scores.stride(0)), stride1_(scores.stride(1)) {}
  float operator()(int64_t b, int64_t n) const { return data_[b * stride0_ + n * stride1_]; }

 private:
  const float* data_;
  int64_t stride0_;
  int64_t stride1_;
};

// Keys of request b: key[n] = min(score_key(scores[b, n]), key[parent]) (so NaN and invalid
// parents make the whole subtree ineligible), then kDropped below `min_key`.
// Returns the number of eligible candidates.
int64_t effective_keys(const ScoreView& scores, const ParentView& parents, int64_t b, int64_t N,
                       uint32_t min_key, uint32_t* key) {
  int64_t eligible = 0;
  for (int64_t n = 0; n < N; ++n) {
    const int64_t parent = parents(b, n);
    uint32_t k = score_key(scores(b, n));
    if (!is_valid_parent(parent, n)) {
      k = kDropped;
    } else if (parent >= 0) {
      k = std::min(k, key[parent]);
    }
    // Dropping at once is exact: keys only decrease along a path, and a dropped parent
    // (kDropped = 0, below every key) drops its children through the min.
    if (k < min_key) k = kDropped;
    key[n] = k;
    eligible += k != kDropped;
  }
  return eligible;
}

// Keeps the `cap` best eligible candidates of one request (e desc, n asc). Eligible sets are
// ancestor-closed, so for chains the best `cap` are simply the first `cap`.
void apply_cap(bool is_chain, int64_t N, int64_t cap, uint32_t* key,
               std::vector<uint64_t>& scratch) {
  if (is_chain) {
    std::fill(key + cap, key + N, kDropped);
    return;
  }
  // Rank key: score key above, ~n below (smaller n wins ties). All distinct.
  scratch.clear();
  for (int64_t n = 0; n < N; ++n) {
    if (key[n] != kDropped) {
      scratch.push_back((uint64_t{key[n]} << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(n)));
    }
  }
  if (cap == 0) {
    std::fill(key, key + N, kDropped);
    return;
  }
  std::nth_element(scratch.begin(), scratch.begin() + (cap - 1), scratch.end(),
                   std::greater<uint64_t>());
  const uint64_t last_kept = scratch[cap - 1];
  for (int64_t n = 0; n < N; ++n) {
    const uint64_t rank_key = (uint64_t{key[n]} << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(n));
    if (key[n] != kDropped && rank_key < last_kept) key[n] = kDropped;
  }
}

// The cut of the global order: every kept key > `key` is selected, and the first `ties`
// (in flat index order) of the kept keys == `key`.
struct Cut {
  uint32_t key;
  int64_t ties;
};

// Radix select of the `take`-th largest of the kept keys (1 <= take <= number kept), given the
// histogram of their top kTopBits bits.
Cut radix_cut(const uint32_t* keys, int64_t count, const TopHistogram& top, int64_t take) {
  // Digit 1: from the histogram built with the keys.
  int64_t remaining = take;
  uint32_t digit = top.size() - 1;
  while (top[digit] < remaining) remaining -= top[digit--];
  uint32_t prefix = digit << kTopShift;

  // The keys in that bucket (usually a small part of the batch), then two more digits.
  std::vector<uint32_t> bucket;
  bucket.reserve(top[digit]);
  for (int64_t i = 0; i < count; ++i) {
    if (keys[i] != kDropped && (keys[i] >> kTopShift) == digit) bucket.push_back(keys[i]);
  }
  int shift = kTopShift;
  for (const int bits : {11, 10}) {
    shift -= bits;
    std::vector<int64_t> hist(size_t{1} << bits, 0);
    const uint32_t mask = (1u << bits) - 1;
    for (const uint32_t k : bucket) {
      if ((k & ~((1u << (shift + bits)) - 1)) == prefix) ++hist[(k >> shift) & mask];
    }
    uint32_t d = mask;
    while (hist[d] < remaining) remaining -= hist[d--];
    prefix |= d << shift;
  }
  return {prefix, remaining};
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

  // Pass 1: kept keys per request and the histogram of their top bits.
  const ScoreView score_view(scores);
  const ParentView parent_view(parents);
  std::optional<IndexView> caps;
  if (max_per_request.has_value()) caps.emplace(*max_per_request);
  const uint32_t min_key = select_min_eligible_key(min_score);

  auto keys = std::make_unique_for_overwrite<uint32_t[]>(B * N);
  TopHistogram top{};
  std::vector<uint64_t> scratch;
  int64_t kept = 0;
  for (int64_t b = 0; b < B; ++b) {
    uint32_t* key = keys.get() + b * N;
    const int64_t eligible = effective_keys(score_view, parent_view, b, N, min_key, key);
    const int64_t cap = caps ? std::max<int64_t>((*caps)(b), 0) : N;
    if (eligible > cap) apply_cap(parent_view.is_chain(), N, cap, key, scratch);
    for (int64_t n = 0; n < N; ++n) {
      if (key[n] != kDropped) {
        ++top[key[n] >> kTopShift];
        ++kept;
      }
    }
  }

  // Pass 2: where the budget cuts the global order. Everything kept fits: cut below all keys.
  Cut cut{kDropped, 0};
  if (budget == 0) {
    cut = {kPosInfKey, 0};  // no kept key is above +inf; no ties taken
  } else if (kept > budget) {
    cut = radix_cut(keys.get(), B * N, top, budget);
  }

  // Pass 3: outputs. Ties at the cut are taken in flat (b, n) order.
  int64_t ties = cut.ties;
  for (int64_t b = 0; b < B; ++b) {
    const uint32_t* key = keys.get() + b * N;
    bool* out = selected_out + b * N;
    int32_t count = 0;
    for (int64_t n = 0; n < N; ++n) {
      bool take = key[n] > cut.key;
      if (key[n] == cut.key && key[n] != kDropped && ties > 0) {
        take = true;
        --ties;
      }
      out[n] = take;
      count += take;
    }
    counts_out[b] = count;
  }
  return {selected, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(tetris, CPU, m) { m.impl("select", &select_cpu); }

}  // namespace tetris::cpu
