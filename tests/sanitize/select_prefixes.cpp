// Runs the select_prefixes kernel through the emulation harness, without torch, so that
// tests/test_sanitizers.py can build it with -fsanitize=address,undefined: any out-of-bounds
// access or undefined behaviour in kernel code fails the run. Inputs include rows outside
// [0, R), caps outside [0, S], NaN / negative / > 1 probabilities, strided probabilities,
// int32 and int64 lengths, and both the shared-memory and the global-workspace paths. Every
// launch also runs with the threads in reverse order and must give the same lengths (no races).
// Buffers are sized exactly, so that ASan sees one element past the end.
#include "emulator/emulator.h"
// The harness must come first.
#include "driver.h"
#include "ops/select_prefixes/kernel.cuh"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

namespace {

using sanitize::check;
std::mt19937 rng(99);

template <class Length>
std::vector<Length> run(int64_t R, int64_t S, int64_t B, int64_t budget, int64_t stride,
                        const std::vector<float>& probs, const std::vector<int32_t>& rows,
                        const std::vector<Length>& caps) {
  std::vector<Length> lengths = caps;
  std::vector<uint32_t> workspace(B * S);
  tetris::SelectPrefixesParams p;
  p.probs = probs.data();
  p.prob_rows = R;
  p.positions = S;
  p.probs_stride[0] = S * stride;
  p.probs_stride[1] = stride;
  p.rows = {rows.data(), false, 1, 0};
  p.batch = B;
  p.budget = budget;
  p.lengths = lengths.data();
  p.lengths_int64 = sizeof(Length) == 8;
  p.lengths_stride = 1;
  p.workspace = workspace.data();
  tetris::emu::launch_select_prefixes(p, nullptr);
  return lengths;
}

template <class Length>
void case_(int64_t R, int64_t S, int64_t B, int64_t budget, int64_t stride) {
  const float specials[] = {NAN, -0.5f, 1.5f, 0.0f, 1.0f, INFINITY};
  std::uniform_real_distribution<float> u(0, 1);
  std::vector<float> probs(R > 0 ? (R * S - 1) * stride + 1 : 0);
  for (auto& x : probs) x = u(rng) < 0.05f ? specials[rng() % 6] : u(rng);
  std::vector<int32_t> rows(B);
  for (auto& r : rows)
    r = u(rng) < 0.1f ? (rng() % 2 ? -1 : static_cast<int32_t>(R + 3))
                      : static_cast<int32_t>(rng() % (R > 0 ? R : 1));
  std::vector<Length> caps(B);
  for (auto& c : caps) c = static_cast<Length>(static_cast<int64_t>(rng() % (S + 4)) - 1);
  const auto [forward, reverse] =
      sanitize::in_both_orders([&] { return run(R, S, B, budget, stride, probs, rows, caps); });
  const int failed_before = sanitize::failures;
  int64_t total = 0;
  for (int64_t b = 0; b < B; ++b) {
    total += forward[b];
    check(forward[b] == reverse[b], "select_prefixes: same lengths in both thread orders");
    check(forward[b] >= 0 && forward[b] <= S, "select_prefixes: lengths in [0, S]");
  }
  check(total <= budget, "select_prefixes: no more than the budget");
  if (sanitize::failures != failed_before)
    std::fprintf(stderr, "  in R=%ld S=%ld B=%ld budget=%ld\n", (long)R, (long)S, (long)B,
                 (long)budget);
}

}  // namespace

int main() {
  case_<int32_t>(9, 8, 7, 20, 1);
  case_<int64_t>(40, 5, 33, 60, 2);
  case_<int32_t>(1100, 8, 1030, 3000, 1);  // more requests than threads
  case_<int64_t>(1, 3, 5, 0, 1);
  case_<int32_t>(7000, 8, 7000, 20000, 1);  // keys in the global workspace
  std::printf("ok select_prefixes\n");
  return sanitize::exit_status();
}
