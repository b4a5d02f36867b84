// Checks of the CPU emulation harness itself (csrc/emulator/): barriers, warp shuffles and votes,
// static and dynamic shared memory, atomics, multi-dimensional indices, and that misuse (a
// barrier only part of the block reaches, a shuffle reading outside its mask, ...) stops the
// launch with a clear message instead of hanging. Built and run by
// tests/test_emulation_harness.py, and under ASan/UBSan by tests/test_sanitizers.py.
// Prints "ok <check>" per check; exits non-zero on the first failure.
#include "emulator/emulator.h"

#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "driver.h"
#include "kernel_common/backend.cuh"

namespace tetris::TETRIS_KERNEL_NS {

constexpr unsigned kFull = 0xffffffffu;

// Block sum: warp xor-reduction, one partial per warp in static shared memory, then warp 0.
__global__ void block_sum(const int* in, int* out, int* grid_info) {
  __shared__ int partial[32];
  const unsigned t = threadIdx.x, lane = t % 32, warp = t / 32;
  const unsigned nwarps = (blockDim.x + 31) / 32;
  int v = in[blockIdx.x * blockDim.x + t];
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(kFull, v, offset);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    int w = lane < nwarps ? partial[lane] : 0;
    for (int offset = 16; offset > 0; offset /= 2) w += __shfl_down_sync(kFull, w, offset);
    if (lane == 0) out[blockIdx.x] = w;
  }
  if (t == 0 && blockIdx.x == 0) grid_info[0] = static_cast<int>(gridDim.x);
}

// Inclusive warp scan with __shfl_up_sync, a width-8 broadcast and a per-lane source rotation.
__global__ void warp_patterns(int* scan, int* broadcast, int* rotate, float* down) {
  const int lane = static_cast<int>(threadIdx.x);
  int v = lane + 1;
  for (int d = 1; d < 32; d *= 2) {
    int up = __shfl_up_sync(kFull, v, d);
    if (lane >= d) v += up;
  }
  scan[lane] = v;
  broadcast[lane] = __shfl_sync(kFull, lane * 10, 3, 8);  // lane 3 of each group of 8
  rotate[lane] = __shfl_sync(kFull, lane * 100, (lane + 1) % 32);
  down[lane] = __shfl_down_sync(kFull, 0.5f * lane, 4, 16);  // own value past the segment
}

// Votes and __match_any_sync on a partial warp, and the counting barriers.
__global__ void votes(unsigned* ballots, unsigned* match, int* flags) {
  const unsigned t = threadIdx.x;
  const unsigned mask = t < 32 ? kFull : 0xffu;  // block of 40: warp 1 has 8 lanes
  ballots[t] = __ballot_sync(mask, t % 3 == 0);
  flags[3 * t + 0] = __any_sync(mask, t == 35);
  flags[3 * t + 1] = __all_sync(mask, t < 39);
  match[t] = __match_any_sync(mask, static_cast<int>(t % 4));
  flags[3 * t + 2] = __syncthreads_count(t % 2 == 0) * 100 + __syncthreads_or(t == 7) * 10 +
                     __syncthreads_and(t < 40);
}

// Sub-warp groups: lanes 0-15 and 16-31 shuffle within their own masks in divergent branches.
__global__ void half_warps(int* out) {
  const unsigned lane = threadIdx.x;
  if (lane < 16) {
    out[lane] = __shfl_xor_sync(0x0000ffffu, static_cast<int>(lane), 1);
  } else {
    __syncwarp(0xffff0000u);
    out[lane] = __shfl_sync(0xffff0000u, static_cast<int>(lane) * 2, 31);
  }
}

// Dynamic shared memory (reverse a 2-D block's values), 2-D indices, atomics.
__global__ void smem_atomics(const int* in, int* reversed, int* counters) {
  int* smem = TETRIS_DYNAMIC_SMEM(int);
  const unsigned n = blockDim.x * blockDim.y;
  const unsigned t = threadIdx.y * blockDim.x + threadIdx.x;
  smem[t] = in[t];
  __syncthreads();
  reversed[t] = smem[n - 1 - t];
  atomicAdd(&counters[0], 1);
  atomicMax(&counters[1], static_cast<int>(t));
  atomicOr(reinterpret_cast<unsigned*>(&counters[2]), 1u << threadIdx.y);
  int expected = counters[3];
  while (atomicCAS(&counters[3], expected, expected + static_cast<int>(threadIdx.x)) != expected)
    expected = counters[3];
}

// A race: reads a neighbour's shared slot without a barrier. Forward and reverse schedules
// disagree, which is how the sanitizer drivers catch races.
__global__ void racy(int* out) {
  __shared__ int slot[64];
  slot[threadIdx.x] = static_cast<int>(threadIdx.x) + 1;
  out[threadIdx.x] = slot[(threadIdx.x + 1) % 64];
  __syncthreads();
  slot[threadIdx.x] = 0;
}

// Misuse that must stop the launch.
__global__ void barrier_after_early_return(int* out) {
  if (threadIdx.x >= 10) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void barrier_in_divergent_code(int* out) {
  if (threadIdx.x % 2 == 0) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

__global__ void shuffle_past_partial_warp(int* out) {
  out[threadIdx.x] = __shfl_down_sync(kFull, static_cast<int>(threadIdx.x), 8);
}

__global__ void lane_outside_its_mask(int* out) { out[threadIdx.x] = __shfl_sync(0x1u, 5, 0); }

__global__ void shuffle_with_exited_lane(int* out) {
  if (threadIdx.x == 5) return;
  out[threadIdx.x] = __shfl_sync(kFull, 5, 0);
}

__global__ void mixed_warp_primitives(int* out) {
  if (threadIdx.x < 16)
    out[threadIdx.x] = __shfl_sync(kFull, 1, 0);
  else
    out[threadIdx.x] = static_cast<int>(__ballot_sync(kFull, 1));
}

}  // namespace tetris::TETRIS_KERNEL_NS

namespace {

using namespace tetris::emu;

void expect(bool condition, const char* check, const std::string& detail = "") {
  if (!condition) sanitize::check(false, (std::string(check) + " " + detail).c_str());
}

template <class F>
void expect_launch_error(const char* check, const char* needle, F&& launch) {
  try {
    launch();
  } catch (const std::runtime_error& e) {
    std::string message = e.what();
    expect(message.find(needle) != std::string::npos, check, "unexpected message: " + message);
    if (message.find(needle) != std::string::npos) std::printf("ok %s\n", check);
    return;
  }
  expect(false, check, "the launch did not fail");
}

void check_block_sum() {
  const unsigned blocks = 3, threads = 96;
  std::vector<int> in(blocks * threads);
  std::iota(in.begin(), in.end(), 1);
  std::vector<int> out(blocks, 0), info(1, 0);
  TETRIS_LAUNCH(block_sum, dim3(blocks), dim3(threads), 0, nullptr, in.data(), out.data(),
                info.data());
  for (unsigned b = 0; b < blocks; ++b) {
    int want = std::accumulate(in.begin() + b * threads, in.begin() + (b + 1) * threads, 0);
    expect(out[b] == want, "block_sum", std::to_string(out[b]) + " != " + std::to_string(want));
  }
  expect(info[0] == 3, "block_sum gridDim");
  std::printf("ok block_sum\n");
}

void check_warp_patterns() {
  std::vector<int> scan(32), broadcast(32), rotate(32);
  std::vector<float> down(32);
  TETRIS_LAUNCH(warp_patterns, 1, 32, 0, nullptr, scan.data(), broadcast.data(), rotate.data(),
                down.data());
  for (int l = 0; l < 32; ++l) {
    expect(scan[l] == (l + 1) * (l + 2) / 2, "shfl_up scan");
    expect(broadcast[l] == ((l / 8) * 8 + 3) * 10, "shfl width 8");
    expect(rotate[l] == ((l + 1) % 32) * 100, "shfl per-lane source");
    float want = (l % 16) + 4 < 16 ? 0.5f * (l + 4) : 0.5f * l;
    expect(down[l] == want, "shfl_down width 16");
  }
  std::printf("ok warp_patterns\n");
}

void check_votes() {
  std::vector<unsigned> ballots(40), match(40);
  std::vector<int> flags(120);
  TETRIS_LAUNCH(votes, 1, 40, 0, nullptr, ballots.data(), match.data(), flags.data());
  unsigned warp0 = 0, warp1 = 0;
  for (unsigned t = 0; t < 40; ++t)
    if (t % 3 == 0) (t < 32 ? warp0 : warp1) |= 1u << (t % 32);
  for (unsigned t = 0; t < 40; ++t) {
    expect(ballots[t] == (t < 32 ? warp0 : warp1), "ballot");
    const unsigned same_residue = (t < 32 ? 0x11111111u : 0x11u) << (t % 4);
    expect(match[t] == same_residue, "match_any");
    expect(flags[3 * t] == (t >= 32), "any");
    expect(flags[3 * t + 1] == (t < 32), "all");
    expect(flags[3 * t + 2] == 20 * 100 + 10 + 1, "syncthreads_count/or/and");
  }
  std::printf("ok votes\n");
}

void check_half_warps() {
  std::vector<int> out(32);
  TETRIS_LAUNCH(half_warps, 1, 32, 0, nullptr, out.data());
  for (int l = 0; l < 32; ++l) expect(out[l] == (l < 16 ? (l ^ 1) : 62), "sub-warp masks");
  std::printf("ok half_warps\n");
}

void check_smem_atomics() {
  const dim3 block(8, 4);
  std::vector<int> in(32), reversed(32), counters(4, 0);
  std::iota(in.begin(), in.end(), 0);
  TETRIS_LAUNCH(smem_atomics, 1, block, 32 * sizeof(int), nullptr, in.data(), reversed.data(),
                counters.data());
  for (int t = 0; t < 32; ++t) expect(reversed[t] == 31 - t, "dynamic smem");
  expect(counters[0] == 32 && counters[1] == 31 && counters[2] == 0xf, "atomics");
  expect(counters[3] == 4 * (0 + 1 + 2 + 3 + 4 + 5 + 6 + 7), "atomicCAS loop");
  std::printf("ok smem_atomics\n");
}

void check_schedules_expose_races() {
  const auto [forward, reverse] = sanitize::in_both_orders([] {
    std::vector<int> out(64);
    TETRIS_LAUNCH(racy, 1, 64, 0, nullptr, out.data());
    return out;
  });
  expect(forward != reverse, "schedules differ on a race");
  std::printf("ok schedules_expose_races\n");
}

// A misused launch and a piece of the message it must stop with.
struct Misuse {
  const char* check;
  const char* needle;
  void (*kernel)(int*);
  unsigned blocks, threads;
};

void check_misuse() {
  const Misuse misuses[] = {
      {"deadlock: barrier after early return", "returned from the kernel",
       barrier_after_early_return, 2, 64},
      {"divergent barrier", "a barrier in divergent code", barrier_in_divergent_code, 1, 64},
      {"shuffle past a partial warp", "not in the mask", shuffle_past_partial_warp, 1, 40},
      {"lane outside its mask", "is not in the mask", lane_outside_its_mask, 1, 32},
      {"deadlock: shuffle with an exited lane", "deadlock", shuffle_with_exited_lane, 1, 32},
      {"mixed warp primitives", "diverged", mixed_warp_primitives, 1, 32},
      {"invalid launch configuration", "invalid launch configuration", racy, 1, 2048},
  };
  std::vector<int> out(64);
  for (const Misuse& m : misuses) {
    expect_launch_error(m.check, m.needle, [&] {
      TETRIS_LAUNCH(m.kernel, m.blocks, m.threads, 0, nullptr, out.data());
    });
  }
}

}  // namespace

int main() {
  check_block_sum();
  check_warp_patterns();
  check_votes();
  check_half_warps();
  check_smem_atomics();
  check_schedules_expose_races();
  check_misuse();
  check_block_sum();  // the harness is usable again after failed launches
  if (sanitize::failures == 0) std::printf("all harness checks passed\n");
  return sanitize::exit_status();
}
