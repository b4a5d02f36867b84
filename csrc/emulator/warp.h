// Warp shuffles and votes with CUDA's lockstep semantics: every lane named in the mask
// contributes its operand, then all read the results (emu_rt::warp_collective). A lane that is
// not in the mask, a shuffle that reads a lane outside the mask, or lanes that meet in
// different primitives stop the launch with a message naming the kernel line.
#pragma once

#include <cstring>
#include <source_location>
#include <type_traits>

#include "emulator/fibers.h"

namespace tetris::emu_rt {

template <class T>
inline uint64_t to_bits(T value) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>,
                "warp shuffles move values of at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  return bits;
}

template <class T>
inline T from_bits(uint64_t bits) {
  T value;
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}

template <class T>
inline T shuffle(WarpOpKind kind, unsigned mask, T var, int arg, int width, const char* what,
                 const std::source_location& site) {
  Collective op;
  op.kind = kind;
  op.mask = mask;
  op.arg = arg;
  op.width = width;
  op.value = to_bits(var);
  return from_bits<T>(warp_collective(op, what, site));
}

inline uint64_t vote(WarpOpKind kind, unsigned mask, int predicate, const char* what,
                     const std::source_location& site) {
  Collective op;
  op.kind = kind;
  op.mask = mask;
  op.value = predicate != 0;
  return warp_collective(op, what, site);
}

}  // namespace tetris::emu_rt

template <class T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32,
                     std::source_location site = std::source_location::current()) {
  using namespace tetris::emu_rt;
  return shuffle(WarpOpKind::kShfl, mask, var, src_lane, width, "__shfl_sync", site);
}

template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32,
                        std::source_location site = std::source_location::current()) {
  using namespace tetris::emu_rt;
  return shuffle(WarpOpKind::kShflUp, mask, var, static_cast<int>(delta), width, "__shfl_up_sync",
                 site);
}

template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32,
                          std::source_location site = std::source_location::current()) {
  using namespace tetris::emu_rt;
  return shuffle(WarpOpKind::kShflDown, mask, var, static_cast<int>(delta), width,
                 "__shfl_down_sync", site);
}

template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32,
                         std::source_location site = std::source_location::current()) {
  using namespace tetris::emu_rt;
  return shuffle(WarpOpKind::kShflXor, mask, var, lane_mask, width, "__shfl_xor_sync", site);
}

inline unsigned __ballot_sync(unsigned mask, int predicate,
                              std::source_location site = std::source_location::current()) {
  using namespace tetris::emu_rt;
  return static_cast<unsigned>(vote(WarpOpKind::kBallot, mask, predicate, "__ballot_sync", site));
}

inline int __any_sync(unsigned mask, int predicate,
                      std::source_location site = std::source_location::current()) {
  using namespace tetris::emu_rt;
  return static_cast<int>(vote(WarpOpKind::kAny, mask, predicate, "__any_sync", site));
}

inline int __all_sync(unsigned mask, int predicate,
                      std::source_location site = std::source_location::current()) {
  using namespace tetris::emu_rt;
  return static_cast<int>(vote(WarpOpKind::kAll, mask, predicate, "__all_sync", site));
}

// The lanes of the mask whose `value` equals the caller's (CUDA's __match_any_sync).
template <class T>
inline unsigned __match_any_sync(unsigned mask, T value,
                                 std::source_location site = std::source_location::current()) {
  using namespace tetris::emu_rt;
  static_assert(std::is_integral_v<T> && sizeof(T) >= 4,
                "__match_any_sync takes 32/64-bit integers");
  Collective op;
  op.kind = WarpOpKind::kMatchAny;
  op.mask = mask;
  op.value = to_bits(value);
  return static_cast<unsigned>(warp_collective(op, "__match_any_sync", site));
}

inline void __syncwarp(unsigned mask = 0xffffffffu,
                       std::source_location site = std::source_location::current()) {
  using namespace tetris::emu_rt;
  vote(WarpOpKind::kSyncWarp, mask, 0, "__syncwarp", site);
}

inline void __syncthreads(std::source_location site = std::source_location::current()) {
  using namespace tetris::emu_rt;
  block_barrier(BarrierKind::kPlain, 0, "__syncthreads", site);
}

inline int __syncthreads_count(int predicate,
                               std::source_location site = std::source_location::current()) {
  using namespace tetris::emu_rt;
  return static_cast<int>(
      block_barrier(BarrierKind::kCount, predicate, "__syncthreads_count", site));
}

inline int __syncthreads_and(int predicate,
                             std::source_location site = std::source_location::current()) {
  using namespace tetris::emu_rt;
  return static_cast<int>(block_barrier(BarrierKind::kAnd, predicate, "__syncthreads_and", site));
}

inline int __syncthreads_or(int predicate,
                            std::source_location site = std::source_location::current()) {
  using namespace tetris::emu_rt;
  return static_cast<int>(block_barrier(BarrierKind::kOr, predicate, "__syncthreads_or", site));
}
