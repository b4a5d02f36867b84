// Runs the select and draft_cumprod kernels through the emulation harness, without torch, so
// that tests/test_sanitizers.py can build them with -fsanitize=address,undefined: any
// out-of-bounds access or undefined behaviour in kernel code fails the run. Inputs include
// invalid token and parent ids, strided and misaligned rows, every logits type, and both the
// shared-memory and the global-workspace paths of select. Every launch also runs with the
// threads of each block in reverse order and must give the same bytes (no races).
// Buffers are sized exactly, so that ASan sees one element past the end.
#include "emulator/emulator.h"
// The harness must come first.
#include "driver.h"
#include "ops/draft_cumprod/kernel.cuh"
#include "ops/select/kernel.cuh"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

namespace {

using sanitize::bytes_of;
using sanitize::check;
using sanitize::check_same_in_both_orders;
using tetris::DraftCumprodParams;
using tetris::FloatType;
using tetris::IndexMatrix;
using tetris::SelectParams;

std::mt19937 rng(1234);

int64_t pick(const std::vector<int64_t>& values) {
  return values[std::uniform_int_distribution<size_t>(0, values.size() - 1)(rng)];
}

// [B, N] indices (int32 or int64), a fraction replaced by out-of-range values.
template <class Index>
std::vector<Index> indices(int64_t B, int64_t N, bool parents, int64_t V, double invalid_rate) {
  std::vector<Index> out(B * N);
  std::uniform_real_distribution<double> u(0, 1);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n = 0; n < N; ++n) {
      int64_t value = parents ? std::uniform_int_distribution<int64_t>(-1, n - 1)(rng)
                              : std::uniform_int_distribution<int64_t>(0, V - 1)(rng);
      if (u(rng) < invalid_rate)
        value = parents ? pick({-2, -7, n, N + 3, INT32_MAX, INT32_MIN})
                        : pick({-1, -5, V, V + 7, INT32_MAX, INT32_MIN});
      out[b * N + n] = static_cast<Index>(value);
    }
  return out;
}

template <class Index>
IndexMatrix matrix(const std::vector<Index>& v, int64_t N) {
  return {v.data(), sizeof(Index) == 8, N, 1};
}

// draft_cumprod on [B, N, V] logits stored with element stride `stride` and `offset` elements
// before the first one (misaligning every row).
template <class S>
void draft_cumprod(FloatType type, int64_t B, int64_t N, int64_t V, int64_t stride, int64_t offset,
                   bool tree) {
  std::normal_distribution<float> normal(0, 3);
  const int64_t row = (V - 1) * stride + 1;
  std::vector<S> logits(offset + B * N * row);
  for (auto& x : logits) {
    float f = normal(rng);
    if constexpr (sizeof(S) == 4) {
      x = f;
    } else {
      uint32_t bits;
      std::memcpy(&bits, &f, 4);
      x = static_cast<S>(bits >> 16);  // bfloat16 bits; as float16, some value of every kind
    }
  }
  auto tokens = indices<int64_t>(B, N, false, V, 0.2);
  auto parents = indices<int32_t>(B, N, true, V, 0.2);
  check_same_in_both_orders("draft_cumprod: same result in both thread orders", [&] {
    std::vector<float> token_logprobs(B * N), cum(B * N);
    std::vector<uint8_t> on_valid_path(B * N);
    DraftCumprodParams p;
    p.logits = logits.data() + offset;
    p.logits_type = type;
    p.batch = B;
    p.candidates = N;
    p.vocab = V;
    p.logits_stride[0] = N * row;
    p.logits_stride[1] = row;
    p.logits_stride[2] = stride;
    p.tokens = matrix(tokens, N);
    if (tree) p.parents = matrix(parents, N);
    p.inverse_temperature = 1.0f / 0.7f;
    p.token_logprobs = token_logprobs.data();
    p.cum_logprobs = cum.data();
    p.on_valid_path = on_valid_path.data();
    tetris::emu::launch_draft_cumprod(p, nullptr);
    for (int64_t i = 0; i < B * N; ++i) check(!(token_logprobs[i] > 0), "log-probabilities <= 0");
    return bytes_of(token_logprobs, cum);
  });
}

void select(int64_t B, int64_t N, int64_t budget, bool tree, bool caps, uint32_t min_key) {
  std::normal_distribution<float> normal(-5, 3);
  std::vector<float> scores(B * N);
  for (auto& s : scores) s = std::round(normal(rng));  // many ties
  for (size_t i = 0; i < scores.size(); i += 17) scores[i] = NAN;
  auto parents = indices<int64_t>(B, N, true, 0, 0.05);
  std::vector<int32_t> cap(B);
  for (auto& c : cap)
    c = static_cast<int32_t>(std::uniform_int_distribution<int64_t>(-2, N + 1)(rng));
  check_same_in_both_orders("select: same result in both thread orders", [&] {
    std::vector<uint8_t> selected(B * N);
    std::vector<int32_t> counts(B);
    std::vector<uint32_t> workspace(tetris::select_workspace_words(B, N));
    SelectParams p;
    p.scores = scores.data();
    p.batch = B;
    p.candidates = N;
    p.scores_stride[0] = N;
    p.scores_stride[1] = 1;
    if (tree) p.parents = matrix(parents, N);
    if (caps) p.caps = {cap.data(), false, 1, 0};
    p.min_key = min_key;
    p.budget = budget;
    p.selected = reinterpret_cast<bool*>(selected.data());
    p.counts = counts.data();
    p.workspace = workspace.data();
    tetris::emu::launch_select(p, nullptr);
    int64_t total = 0;
    for (int64_t b = 0; b < B; ++b) total += counts[b];
    check(total <= budget, "select: no more than the budget");
    return bytes_of(selected, counts);
  });
}

}  // namespace

int main() {
  const uint32_t no_threshold = tetris::kNegInfKey + 1;
  for (int64_t V : {1, 7, 37, 300}) {
    for (int64_t stride : {1, 2}) {
      for (int64_t offset : {0, 1, 3}) {
        draft_cumprod<float>(FloatType::kFloat32, 3, 5, V, stride, offset, true);
        draft_cumprod<uint16_t>(FloatType::kFloat16, 2, 4, V, stride, offset, true);
        draft_cumprod<uint16_t>(FloatType::kBFloat16, 2, 4, V, stride, offset, false);
      }
    }
  }
  draft_cumprod<float>(FloatType::kFloat32, 2, 2, 5000, 1, 1, true);
  std::printf("ok draft_cumprod\n");

  for (bool tree : {false, true}) {
    for (bool caps : {false, true}) {
      select(4, 6, 0, tree, caps, no_threshold);
      select(4, 6, 5, tree, caps, no_threshold);
      select(4, 6, 100, tree, caps, tetris::score_key(-6.0f));
      select(37, 41, 300, tree, caps, no_threshold);
    }
  }
  select(1024, 40, 9000, true, true, no_threshold);  // keys in the global workspace
  std::printf("ok select\n");
  return sanitize::exit_status();
}
