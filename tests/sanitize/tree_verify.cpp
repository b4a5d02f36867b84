// Runs the tree_mask, tree_mask_packed, verify_greedy and verify_sampling kernels through the
// emulation harness, without torch, so that tests/test_sanitizers.py can build them with
// -fsanitize=address,undefined: any out-of-bounds access or undefined behaviour in kernel code
// fails the run. Inputs include invalid parent, slot_parent and token ids (out of range, huge,
// negative), NaN / infinite / negative probabilities, out-of-range uniforms, strided and
// misaligned rows, and both index dtypes. Buffers are sized exactly, so that ASan sees one
// element past the end. Every launch also runs with the threads of each block in reverse order
// and must give the same bytes (no races). Besides, the outputs are checked for what holds on
// any input (slots in order, paths that follow slot_parent, the packed mask equal to the dense
// one, tokens in range), and small worked examples for their exact values.
// Prints "ok <check>" per group; exits non-zero if any check failed.
#include "emulator/emulator.h"
// The harness must come first.
#include "driver.h"
#include "ops/tree_mask/kernel.cuh"
#include "ops/verify_greedy/kernel.cuh"
#include "ops/verify_sampling/kernel.cuh"

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
using tetris::IndexMatrix;

std::mt19937 rng(2024);

int64_t uniform_int(int64_t lo, int64_t hi) {
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
}
bool chance(double p) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; }

// An index no tensor has: negative, or too large for any of them.
int64_t invalid_id() {
  const int64_t ids[] = {-2, -7, INT32_MIN, INT32_MAX};
  return ids[uniform_int(0, 3)];
}

// An index matrix [B, N] stored as Index with row stride `row` (>= N) elements.
template <class Index>
struct Indices {
  std::vector<Index> values;
  int64_t row;
  IndexMatrix matrix() const { return {values.data(), sizeof(Index) == 8, row, 1}; }
  Index& at(int64_t b, int64_t n) { return values[b * row + n]; }
};

template <class Index>
Indices<Index> make_indices(int64_t B, int64_t N, int64_t row_pad) {
  const int64_t row = N + row_pad;
  // Sized exactly up to the last element read.
  return {std::vector<Index>(B == 0 || N == 0 ? 0 : (B - 1) * row + N), row};
}

// --- tree_mask, tree_mask_packed ---------------------------------------------------------------

template <class Index>
void tree_mask(int64_t B, int64_t N, bool chains, double invalid_rate) {
  const int64_t M = N + 1, W = (M + 7) / 8;
  auto parents = make_indices<Index>(B, N, 1);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n = 0; n < N; ++n) {
      int64_t p = uniform_int(-1, n - 1);
      if (chance(invalid_rate)) p = chance(0.5) ? invalid_id() : n + uniform_int(0, 3);
      parents.at(b, n) = static_cast<Index>(p);
    }
  std::vector<uint8_t> selected_storage(B * N * 2);  // selected read with stride 2
  for (auto& s : selected_storage) s = chance(0.8);
  std::vector<int32_t> prefix(B);
  for (auto& p : prefix) p = static_cast<int32_t>(uniform_int(0, 1 << 20));

  auto inputs = [&] {
    tetris::TreeMaskParams p;
    p.batch = B;
    p.candidates = N;
    p.selected = reinterpret_cast<const bool*>(selected_storage.data());
    p.selected_stride[0] = 2 * N;
    p.selected_stride[1] = 2;
    if (!chains) p.parents = parents.matrix();
    p.prefix_lens = {prefix.data(), false, 1, 0};
    return p;
  };
  std::vector<int64_t> slot_index(B * M), slot_parent(B * M), positions(B * M);
  std::vector<uint8_t> mask(B * M * M), packed(B * M * W);
  std::vector<int32_t> cu_seqlens(B + 1);
  check_same_in_both_orders("tree_mask: same result in both thread orders", [&] {
    tetris::TreeMaskParams p = inputs();
    p.slot_index = slot_index.data();
    p.slot_parent = slot_parent.data();
    p.positions = positions.data();
    p.mask = reinterpret_cast<bool*>(mask.data());
    tetris::emu::launch_tree_mask(p, nullptr);
    return bytes_of(slot_index, slot_parent, positions, mask);
  });
  check_same_in_both_orders("tree_mask_packed: same result in both thread orders", [&] {
    std::vector<int64_t> scratch_index(B * M), scratch_parent(B * M);
    tetris::TreeMaskParams p = inputs();
    p.slot_index = scratch_index.data();
    p.slot_parent = scratch_parent.data();
    p.cu_seqlens = cu_seqlens.data();
    p.packed_mask = packed.data();
    if (B == 0) cu_seqlens[0] = 0;  // as the torch launcher does
    tetris::emu::launch_tree_mask_packed(p, nullptr);
    return bytes_of(cu_seqlens, packed);
  });

  check(cu_seqlens[0] == 0, "tree_mask_packed: cu_seqlens starts at 0");
  for (int64_t b = 0; b < B; ++b) {
    const int64_t* index = &slot_index[b * M];
    const int64_t* parent = &slot_parent[b * M];
    int64_t count = 0;
    while (count + 1 < M && index[count + 1] >= 0) ++count;
    check(index[0] == -1 && parent[0] == -1 && positions[b * M] == prefix[b],
          "tree_mask: root slot");
    for (int64_t s = 1; s < M; ++s) {
      if (s <= count) {
        const int64_t n = index[s];
        check(n < N && (s == 1 || index[s - 1] < n), "tree_mask: slots in increasing n");
        check(parent[s] >= 0 && parent[s] < s, "tree_mask: parent slot earlier");
        check(positions[b * M + s] == positions[b * M + parent[s]] + 1, "tree_mask: depth");
        const bool sel = selected_storage[(b * N + n) * 2];
        check(sel, "tree_mask: only selected candidates");
        const int64_t pn = chains ? n - 1 : static_cast<int64_t>(parents.at(b, n));
        check(pn == (parent[s] == 0 ? -1 : index[parent[s]]),
              "tree_mask: parent slot holds the parent");
      } else {
        check(index[s] == -1 && parent[s] == -1 && positions[b * M + s] == prefix[b],
              "tree_mask: padding");
      }
      for (int64_t j = 0; j < M; ++j) {
        bool want = j == s;
        if (s >= 1 && s <= count && j < s) want = mask[(b * M + parent[s]) * M + j] != 0;
        check((mask[(b * M + s) * M + j] != 0) == (want || j == s),
              "tree_mask: row = parent's row + itself");
        const bool bit = (packed[(b * M + s) * W + j / 8] >> (j % 8)) & 1;
        check(bit == (mask[(b * M + s) * M + j] != 0), "tree_mask_packed: bits of the dense mask");
      }
    }
    for (int64_t s = 0; s < M; ++s)
      for (int64_t j = M; j < 8 * W; ++j)
        check(((packed[(b * M + s) * W + j / 8] >> (j % 8)) & 1) == 0,
              "tree_mask_packed: no bits past M");
    check(cu_seqlens[b + 1] - cu_seqlens[b] == count + 1, "tree_mask_packed: query lengths");
  }
}

// Worked example: candidates 0..4 with parents [-1, 0, -1, 7 (invalid), 1]; 2 is not selected,
// 3 has an invalid parent: slots 1..3 hold candidates 0, 1, 4 (a chain), slots 4 and 5 padding.
void tree_mask_example() {
  const int64_t N = 5, M = 6;
  const int64_t parents[N] = {-1, 0, -1, 7, 1};
  const uint8_t selected[N] = {1, 1, 0, 1, 1};
  const int64_t prefix = 10;
  std::vector<int64_t> slot_index(M), slot_parent(M), positions(M);
  std::vector<uint8_t> mask(M * M);
  tetris::TreeMaskParams p;
  p.batch = 1;
  p.candidates = N;
  p.selected = reinterpret_cast<const bool*>(selected);
  p.selected_stride[0] = N;
  p.selected_stride[1] = 1;
  p.parents = {parents, true, N, 1};
  p.prefix_lens = {&prefix, true, 1, 0};
  p.slot_index = slot_index.data();
  p.slot_parent = slot_parent.data();
  p.positions = positions.data();
  p.mask = reinterpret_cast<bool*>(mask.data());
  tetris::emu::launch_tree_mask(p, nullptr);
  check(slot_index == std::vector<int64_t>{-1, 0, 1, 4, -1, -1}, "tree_mask example: slot_index");
  check(slot_parent == std::vector<int64_t>{-1, 0, 1, 2, -1, -1}, "tree_mask example: slot_parent");
  check(positions == std::vector<int64_t>{10, 11, 12, 13, 10, 10}, "tree_mask example: positions");
  const uint8_t want[M][M] = {{1, 0, 0, 0, 0, 0}, {1, 1, 0, 0, 0, 0}, {1, 1, 1, 0, 0, 0},
                              {1, 1, 1, 1, 0, 0}, {0, 0, 0, 0, 1, 0}, {0, 0, 0, 0, 0, 1}};
  check(std::memcmp(mask.data(), want, M * M) == 0, "tree_mask example: mask");
}

// --- verify_greedy, verify_sampling -------------------------------------------------------------

// slot_parent rows: a random tree over slots 1..count in topological order, padding -1, and
// some invalid values (a slot itself, a later slot, huge, below -1).
template <class Index>
Indices<Index> slot_parents(int64_t B, int64_t M, double invalid_rate) {
  auto parents = make_indices<Index>(B, M, 3);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t count = uniform_int(0, M - 1);
    for (int64_t s = 0; s < M; ++s) {
      int64_t p = s >= 1 && s <= count ? uniform_int(0, s - 1) : -1;
      if (chance(invalid_rate)) p = chance(0.5) ? invalid_id() : s + uniform_int(0, 2);
      parents.at(b, s) = static_cast<Index>(p);
    }
  }
  return parents;
}

// What holds for the outputs of both verify ops on any input.
template <class Index, class TokenIndex>
void check_paths(const char* op, int64_t B, int64_t M, Indices<Index>& parents,
                 Indices<TokenIndex>& tokens, const std::vector<int64_t>& accepted,
                 const std::vector<int32_t>& num, const std::vector<int64_t>& out) {
  for (int64_t b = 0; b < B; ++b) {
    const int64_t k = num[b];
    check(k >= 0 && k < M, op);
    int64_t current = 0;
    for (int64_t i = 0; i < M; ++i) {
      if (i < k) {
        const int64_t s = accepted[b * M + i];
        check(s > current && s < M && parents.at(b, s) == current, op);
        if (s > current && s < M) check(out[b * M + i] == tokens.at(b, s), op);
        current = s;
      } else {
        check(accepted[b * M + i] == -1, op);
        if (i > k) check(out[b * M + i] == -1, op);
      }
    }
  }
}

// The walk's part of the verify params: B requests of M slots, and the three outputs.
void set_walk(tetris::VerifyWalkParams& p, int64_t B, int64_t M, IndexMatrix tokens,
              IndexMatrix parents, std::vector<int64_t>& accepted, std::vector<int32_t>& num,
              std::vector<int64_t>& out) {
  p.batch = B;
  p.slots = M;
  p.slot_tokens = tokens;
  p.slot_parent = parents;
  p.accepted_slots = accepted.data();
  p.num_accepted = num.data();
  p.out_tokens = out.data();
}

void verify_greedy(int64_t B, int64_t M) {
  auto parents = slot_parents<int32_t>(B, M, 0.1);
  auto tokens = make_indices<int64_t>(B, M, 1);
  auto targets = make_indices<int32_t>(B, M, 0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < M; ++s) {
      tokens.at(b, s) = chance(0.1) ? int64_t{1} << 40 : uniform_int(0, 3);
      targets.at(b, s) = static_cast<int32_t>(chance(0.05) ? -1 : uniform_int(0, 3));
    }
  std::vector<int64_t> accepted(B * M), out(B * M);
  std::vector<int32_t> num(B);
  check_same_in_both_orders("verify_greedy: same result in both thread orders", [&] {
    tetris::VerifyGreedyParams p;
    set_walk(p, B, M, tokens.matrix(), parents.matrix(), accepted, num, out);
    p.target_tokens = targets.matrix();
    tetris::emu::launch_verify_greedy(p, nullptr);
    return bytes_of(accepted, num, out);
  });
  check_paths("verify_greedy: accepted paths follow slot_parent", B, M, parents, tokens, accepted,
              num, out);
  for (int64_t b = 0; b < B; ++b) {
    int64_t current = 0;
    for (int64_t i = 0; i < num[b]; ++i) {
      const int64_t s = accepted[b * M + i];
      check(tokens.at(b, s) == targets.at(b, current), "verify_greedy: accepted tokens match");
      current = s;
    }
    check(out[b * M + num[b]] == targets.at(b, current), "verify_greedy: bonus token");
    // The walk stops only where no child of the last slot matches.
    for (int64_t s = current + 1; s < M; ++s)
      check(!(parents.at(b, s) == current && tokens.at(b, s) == targets.at(b, current)),
            "verify_greedy: no matching child left");
  }
}

// Probabilities as float rows of V with element stride `stride`, `offset` floats before the
// first (misaligning rows); some NaN, infinite and negative values.
struct Probs {
  std::vector<float> storage;
  int64_t offset, stride, row;
  float* data() { return storage.data() + offset; }
};

Probs probs(int64_t B, int64_t M, int64_t V, int64_t stride, int64_t offset, bool dirty) {
  const int64_t row = (V - 1) * stride + 1;
  Probs p{std::vector<float>(offset + B * M * row), offset, stride, row};
  std::uniform_real_distribution<float> u(0, 1);
  for (auto& x : p.storage) {
    x = chance(0.3) ? 0.f : u(rng);
    if (dirty && chance(0.05)) x = chance(0.5) ? NAN : (chance(0.5) ? INFINITY : -0.25f);
  }
  return p;
}

void verify_sampling(int64_t B, int64_t M, int64_t V, bool draft, int64_t stride, int64_t offset) {
  auto parents = slot_parents<int64_t>(B, M, 0.1);
  auto tokens = make_indices<int32_t>(B, M, 2);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < M; ++s)
      tokens.at(b, s) = static_cast<int32_t>(
          chance(0.1) ? invalid_id() : (chance(0.05) ? V : uniform_int(0, V - 1)));
  Probs target = probs(B, M, V, stride, offset, true);
  Probs drafts = probs(B, M, V, 1, 0, true);
  std::vector<float> uniforms(B * M);
  std::uniform_real_distribution<float> unit(0, 1);
  for (auto& u : uniforms) u = chance(0.05) ? (chance(0.5) ? NAN : 1.5f) : unit(rng);
  std::vector<int64_t> accepted(B * M), out(B * M);
  std::vector<int32_t> num(B);
  check_same_in_both_orders("verify_sampling: same result in both thread orders", [&] {
    std::vector<float> scratch(B * V);
    tetris::VerifySamplingParams p;
    set_walk(p, B, M, tokens.matrix(), parents.matrix(), accepted, num, out);
    p.vocab = V;
    p.target_probs = target.data();
    p.target_stride[0] = M * target.row;
    p.target_stride[1] = target.row;
    p.target_stride[2] = stride;
    if (draft) {
      p.draft_probs = drafts.data();
      p.draft_stride[0] = M * V;
      p.draft_stride[1] = V;
      p.draft_stride[2] = 1;
    }
    p.uniforms = uniforms.data();
    p.uniforms_stride[0] = M;
    p.uniforms_stride[1] = 1;
    p.scratch = scratch.data();
    tetris::emu::launch_verify_sampling(p, nullptr);
    return bytes_of(accepted, num, out);
  });
  check_paths("verify_sampling: accepted paths follow slot_parent", B, M, parents, tokens, accepted,
              num, out);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t bonus = out[b * M + num[b]];
    check(bonus >= -1 && bonus < V, "verify_sampling: bonus token in range");
    for (int64_t i = 0; i < num[b]; ++i) {
      const int64_t t = out[b * M + i];
      check(t >= 0 && t < V, "verify_sampling: accepted tokens in range");
    }
  }
}

// Worked examples (docs/ops.md): deterministic children and a drafted child.
void verify_examples() {
  // Greedy: root target 5; slots 1 (token 5, parent 0) and 2 (token 5, parent 0): the first
  // matching child (slot 1) is taken, then slot 3 (token 9 after slot 1's target 9); bonus 4.
  {
    const int64_t tokens[4] = {0, 5, 5, 9}, parents[4] = {-1, 0, 0, 1}, targets[4] = {5, 9, 1, 4};
    std::vector<int64_t> accepted(4), out(4);
    std::vector<int32_t> num(1);
    tetris::VerifyGreedyParams p;
    set_walk(p, 1, 4, {tokens, true, 4, 1}, {parents, true, 4, 1}, accepted, num, out);
    p.target_tokens = {targets, true, 4, 1};
    tetris::emu::launch_verify_greedy(p, nullptr);
    check(num[0] == 2 && accepted == std::vector<int64_t>{1, 3, -1, -1} &&
              out == std::vector<int64_t>{5, 9, 4, -1},
          "verify_greedy example");
  }
  // Sampling without draft_probs: root p = [0.5, 0.5, 0, 0]; slot 1 (token 0, u = 0.75)
  // rejected: 0.75 * 1 >= 0.5, p = [0, 0.5, 0, 0]; slot 2 (token 1, u = 0.75) accepted:
  // 0.75 * 0.5 < 0.5; slot 2 is a leaf: bonus from target[2] = [0, 0, 1, 0] -> 2.
  // With draft q = [0.5, 0.5, 0, 0] at the root, slot 1 is accepted: 0.75 * 0.5 * 1 < 0.5.
  for (bool draft : {false, true}) {
    const int32_t tokens[3] = {0, 0, 1}, parents[3] = {-1, 0, 0};
    const float target[12] = {0.5f, 0.5f, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0};
    const float q[12] = {0.5f, 0.5f, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0};
    const float uniforms[3] = {0.5f, 0.75f, 0.75f};
    std::vector<float> scratch(4);
    std::vector<int64_t> accepted(3), out(3);
    std::vector<int32_t> num(1);
    tetris::VerifySamplingParams p;
    set_walk(p, 1, 3, {tokens, false, 3, 1}, {parents, false, 3, 1}, accepted, num, out);
    p.vocab = 4;
    p.target_probs = target;
    p.target_stride[0] = 12;
    p.target_stride[1] = 4;
    p.target_stride[2] = 1;
    if (draft) {
      p.draft_probs = q;
      p.draft_stride[0] = 12;
      p.draft_stride[1] = 4;
      p.draft_stride[2] = 1;
    }
    p.uniforms = uniforms;
    p.uniforms_stride[0] = 3;
    p.uniforms_stride[1] = 1;
    p.scratch = scratch.data();
    tetris::emu::launch_verify_sampling(p, nullptr);
    if (draft)  // slot 1 accepted; leaf: bonus from target[1] = [1, 0, 0, 0] -> 0
      check(num[0] == 1 && accepted[0] == 1 && out == std::vector<int64_t>{0, 0, -1},
            "verify_sampling example (drafted)");
    else
      check(num[0] == 1 && accepted[0] == 2 && out == std::vector<int64_t>{1, 2, -1},
            "verify_sampling example (deterministic)");
  }
}

}  // namespace

int main() {
  tree_mask_example();
  for (int64_t N : {0, 1, 5, 31, 32, 33, 300}) {
    for (bool chains : {false, true}) {
      tree_mask<int32_t>(3, N, chains, 0.1);
      tree_mask<int64_t>(2, N, chains, 0.0);
    }
  }
  tree_mask<int64_t>(0, 4, false, 0.1);
  tree_mask<int32_t>(1030, 3, false, 0.2);  // cu_seqlens over two tiles
  std::printf("ok tree_mask\n");

  verify_examples();
  for (int64_t M : {1, 2, 9, 33, 300}) verify_greedy(3, M);
  verify_greedy(0, 4);
  std::printf("ok verify_greedy\n");

  for (int64_t V : {1, 3, 7, 130}) {
    for (bool draft : {false, true}) {
      for (int64_t stride : {1, 2}) {
        for (int64_t offset : {0, 1}) verify_sampling(3, 7, V, draft, stride, offset);
      }
    }
  }
  verify_sampling(2, 40, 4099, true, 1, 1);
  verify_sampling(2, 40, 4099, false, 1, 0);
  verify_sampling(0, 3, 5, true, 1, 0);
  std::printf("ok verify_sampling\n");
  return sanitize::exit_status();
}
