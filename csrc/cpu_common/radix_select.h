// Radix selection over order-preserving uint32 keys (csrc/host_device/score_key.h) on the CPU: the
// budget-th largest key of a batch, found from a histogram of the top 11 bits and two more
// digits over the (few) keys of the bucket that holds it. Shared by select and select_prefixes.
#pragma once

#include <array>
#include <cstdint>
#include <tuple>
#include <vector>

namespace tetris::cpu {

// Radix digits of the 32-bit key: 11 + 11 + 10 bits.
constexpr int kTopBits = 11;
constexpr int kTopShift = 32 - kTopBits;
using TopHistogram = std::array<int64_t, 1 << kTopBits>;
// A value no top digit has.
constexpr uint32_t kNoDigit = 0xFFFFFFFFu;

// Histogram of the top digits of keys[0..count). Four interleaved sub-histograms, so that
// neighbours with the same digit (common: keys never increase along a path) do not wait for
// each other's increment of one counter.
inline void top_histogram(const uint32_t* keys, int64_t count, TopHistogram& top) {
  // uint32 parts keep them in L1; each counts a quarter of the keys (< 2^32 for any tensor
  // below 64 GiB of scores).
  std::array<std::array<uint32_t, 1 << kTopBits>, 4> part{};
  int64_t i = 0;
  for (; i + 4 <= count; i += 4) {
    for (int j = 0; j < 4; ++j) ++part[j][keys[i + j] >> kTopShift];
  }
  for (; i < count; ++i) ++part[0][keys[i] >> kTopShift];
  for (size_t d = 0; d < top.size(); ++d) {
    top[d] = int64_t{part[0][d]} + part[1][d] + part[2][d] + part[3][d];
  }
}

// Finds, in a histogram of digits, the digit holding the `rank`-th largest element
// (1 <= rank <= total), and the rank it has inside that digit's bucket. Most bins are empty (the
// keys of a batch span few digits), so the walk from the top skips whole blocks of bins at a
// time (a vectorised sum each) before it steps through the block that holds the rank: the
// one-bin-at-a-time walk was a serial chain of up to 2048 steps per call.
template <class Histogram>
uint32_t digit_of_rank(const Histogram& hist, int64_t& rank) {
  constexpr size_t kBlock = 16;
  static_assert(std::tuple_size_v<Histogram> % kBlock == 0);
  size_t end = hist.size();  // bins [end, size) hold fewer than the original rank
  while (true) {
    int64_t block = 0;
    for (size_t d = end - kBlock; d < end; ++d) block += hist[d];
    if (block >= rank) break;
    rank -= block;
    end -= kBlock;
  }
  uint32_t digit = end - 1;
  while (hist[digit] < rank) rank -= hist[digit--];
  return digit;
}

// The cut inside the top-digit bucket: keys > key are taken, and `ties` of those == key.
struct Cut {
  uint32_t key;
  int64_t ties;
};

// Radix select of the rank-th largest of `bucket` (keys sharing their top digit, `prefix`)
// on the two lower digits.
inline Cut cut_in_bucket(const std::vector<uint32_t>& bucket, uint32_t prefix, int64_t rank) {
  std::array<int64_t, 1 << 11> middle{};
  for (const uint32_t k : bucket) ++middle[(k >> 10) & 0x7FFu];
  prefix |= digit_of_rank(middle, rank) << 10;
  std::array<int64_t, 1 << 10> low{};
  for (const uint32_t k : bucket) {
    if ((k & ~0x3FFu) == prefix) ++low[k & 0x3FFu];
  }
  prefix |= digit_of_rank(low, rank);
  return {prefix, rank};
}

}  // namespace tetris::cpu
