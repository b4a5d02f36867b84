// What the sanitizer drivers (tests/sanitize/*.cpp) share: counting failed checks, comparing a
// launch's outputs across the emulator's two thread orders, and the exit status. Include after
// emulator/emulator.h.
#pragma once

#include <cstdint>
#include <cstdio>
#include <vector>

namespace sanitize {

inline int failures = 0;

inline void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "FAIL %s\n", what);
    ++failures;
  }
}

// The bytes of output buffers, one after another, for comparing two runs.
using Bytes = std::vector<uint8_t>;

template <class... T>
Bytes bytes_of(const std::vector<T>&... buffers) {
  Bytes bytes;
  auto add = [&](const auto& v) {
    const auto* p = reinterpret_cast<const uint8_t*>(v.data());
    bytes.insert(bytes.end(), p, p + v.size() * sizeof(v[0]));
  };
  (add(buffers), ...);
  return bytes;
}

// Runs `run` (which launches and returns its outputs) with the threads of every block in
// forward and then in reverse order; returns both results and leaves the forward order set.
template <class Run>
auto in_both_orders(Run run) {
  using tetris::emu_rt::Schedule;
  tetris::emu_rt::set_schedule(Schedule::kForward);
  auto forward = run();
  tetris::emu_rt::set_schedule(Schedule::kReverse);
  auto reverse = run();
  tetris::emu_rt::set_schedule(Schedule::kForward);
  return std::pair{forward, reverse};
}

// A race shows up as outputs that depend on the thread order.
template <class Run>
void check_same_in_both_orders(const char* what, Run run) {
  const auto [forward, reverse] = in_both_orders(run);
  check(forward == reverse, what);
}

// main's return value: 0 when every check passed.
inline int exit_status() {
  if (failures == 0) return 0;
  std::fprintf(stderr, "%d check(s) failed\n", failures);
  return 1;
}

}  // namespace sanitize
