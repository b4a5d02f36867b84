// select_prefixes on the CPU (docs/ops.md): the `budget` best chain positions over the batch by
// path probability, written back as each request's prefix length.
//
//   1. one score key per position (csrc/hd/prefix_prob.h): the running product of the
//      request's clamped probabilities, kNotKept past its cap; keys never increase along a row;
//   2. when more positions are kept than the budget, the budget-th largest key T and how many
//      keys equal to T fit (csrc/cpu/radix_select.h, as select does);
//   3. each request's length: its keys > T, plus its keys == T while the ties last, in request
//      order (the tie order (request, position) of select).
// Time O(B * S), memory one uint32 per position; no sort.
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "args/select_prefixes.h"
#include "cpu/index_view.h"
#include "cpu/radix_select.h"
#include "hd/prefix_prob.h"

namespace tetris::cpu {
namespace {

// lengths[b] written in its dtype (int32 or int64, validated by the caller).
void write_length(const at::Tensor& lengths, int64_t b, int64_t value) {
  const int64_t offset = b * lengths.stride(0);
  if (lengths.scalar_type() == at::kLong) {
    lengths.data_ptr<int64_t>()[offset] = value;
  } else {
    lengths.data_ptr<int32_t>()[offset] = static_cast<int32_t>(value);
  }
}

// Step 2: the cut when more than `budget` (>= 1) of the K keys are kept.
Cut cut_keys(const uint32_t* keys, int64_t K, int64_t budget) {
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

void select_prefixes_cpu(const at::Tensor& probs, const at::Tensor& rows,
                         const at::Tensor& lengths, int64_t budget) {
  check_select_prefixes_args(probs, rows, lengths, budget);
  const int64_t R = probs.size(0), S = probs.size(1), B = rows.size(0);
  const float* data = probs.data_ptr<float>();
  const IndexView row_of(rows), cap_of(lengths);

  // 1. Keys, and the kept length of every request.
  auto keys = std::make_unique_for_overwrite<uint32_t[]>(std::max<int64_t>(B * S, 1));
  auto kept = std::make_unique_for_overwrite<int64_t[]>(std::max<int64_t>(B, 1));
  int64_t total = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t r = row_of(b);
    const float* row = r >= 0 && r < R ? data + r * probs.stride(0) : nullptr;
    kept[b] = prefix_keys(row, probs.stride(1), S, cap_of(b), keys.get() + b * S);
    total += kept[b];
  }
  if (total <= budget) {  // everything kept fits (and B * S == 0 ends here)
    for (int64_t b = 0; b < B; ++b) write_length(lengths, b, kept[b]);
    return;
  }
  if (budget == 0) {
    for (int64_t b = 0; b < B; ++b) write_length(lengths, b, 0);
    return;
  }

  // 2. The cut; 3. the lengths (ties in request order; a row's ties follow its keys above T).
  Cut cut = cut_keys(keys.get(), B * S, budget);
  for (int64_t b = 0; b < B; ++b) {
    const uint32_t* key = keys.get() + b * S;
    int64_t above = 0, equal = 0;
    for (int64_t n = 0; n < kept[b]; ++n) {
      above += key[n] > cut.key;
      equal += key[n] == cut.key;
    }
    const int64_t ties = std::min(equal, cut.ties);
    cut.ties -= ties;
    write_length(lengths, b, above + ties);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(tetris, CPU, m) { m.impl("select_prefixes", &select_prefixes_cpu); }

}  // namespace tetris::cpu
