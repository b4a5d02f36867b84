// The emulator's scheduler: every thread of a CUDA block is a cooperative fiber (its own
// stack, emulator/context.h); blocks of a launch run one after another on the launching OS thread.
//
// A fiber runs until it reaches a synchronisation point (__syncthreads, a warp shuffle or
// vote) or returns, then hands the CPU straight to the next runnable fiber (a FIFO run queue,
// so the schedule is round robin and deterministic). The last thread to arrive at a barrier or
// warp collective completes it for everybody and carries on. When no fiber can run but some
// have not returned, the kernel is stuck (a barrier that only part of the block reaches, a
// shuffle whose mask names a lane that never calls it): the launch stops with a report of
// where every thread waits, thrown as std::runtime_error from the launch (a Python
// RuntimeError through torch; an abort with the message in a standalone program).
//
// Consequences for kernel code (documented in docs/kernels.md):
//   - Between two synchronisation points a thread runs alone, so atomics are plain
//     read-modify-writes and a data race never shows. TETRIS_EMU_SCHEDULE=reverse (or
//     set_schedule) runs the threads in the opposite order, which makes a racy kernel give a
//     different answer; the sanitizer drivers compare both orders.
//   - `__shared__` is `static thread_local`: one copy per OS thread, shared by the fibers of
//     the block that runs there, and not cleared between blocks (like uninitialised memory).
#pragma once

#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <source_location>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "emulator/context.h"
#include "emulator/types.h"

#if defined(__SANITIZE_ADDRESS__)
#define TETRIS_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TETRIS_EMU_ASAN 1
#endif
#endif
#ifdef TETRIS_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace tetris::emu_rt {

inline constexpr unsigned kWarpSize = 32;
inline constexpr unsigned kMaxThreadsPerBlock = 1024;
#ifdef TETRIS_EMU_ASAN
// AddressSanitizer surrounds every local with redzones: frames grow several times.
inline constexpr size_t kStackBytes = 256 * 1024;
#else
inline constexpr size_t kStackBytes = 64 * 1024;
#endif

enum class Wait : uint8_t { kRunnable, kBarrier, kWarp, kExited };

enum class WarpOpKind : uint8_t {
  kSyncWarp,
  kShfl,
  kShflUp,
  kShflDown,
  kShflXor,
  kBallot,
  kAny,
  kAll,
  kMatchAny
};

enum class BarrierKind : uint8_t { kPlain, kCount, kAnd, kOr };

// What a thread brings to a collective (barrier or warp primitive) and what it gets back.
struct Collective {
  WarpOpKind kind = WarpOpKind::kSyncWarp;
  unsigned mask = 0;    // warp primitives: the lanes that take part
  int arg = 0;          // source lane, delta or lane mask
  int width = 32;       // shuffles: the sub-warp width
  uint64_t value = 0;   // the operand (bits of the shuffled value, or the predicate)
  uint64_t result = 0;  // written by the thread that completes the collective
};

struct Fiber {
  Context context;
  void* stack = nullptr;  // lowest usable address; kStackBytes long, a guard page below
  uint3 thread_idx{0, 0, 0};
  unsigned linear = 0, lane = 0, warp = 0;
  Wait wait = Wait::kRunnable;
  const char* what = "";      // the primitive it waits in (for reports)
  std::source_location site;  // and where the kernel called it
  Collective op;
  void* asan_fake_stack = nullptr;
};

// Fiber stacks, kept per OS thread across launches (mmap'd once, a PROT_NONE guard page
// under each so that an overflow faults instead of corrupting the neighbour's stack).
class StackPool {
 public:
  StackPool() = default;
  StackPool(const StackPool&) = delete;
  StackPool& operator=(const StackPool&) = delete;
  ~StackPool() {
    for (void* s : stacks_)
      munmap(static_cast<char*>(s) - guard_bytes(), kStackBytes + guard_bytes());
  }
  void* get(size_t i) {
    while (stacks_.size() <= i) {
      void* m = mmap(nullptr, kStackBytes + guard_bytes(), PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (m == MAP_FAILED) throw std::runtime_error("tetris emulator: cannot map a fiber stack");
      mprotect(m, guard_bytes(), PROT_NONE);
      stacks_.push_back(static_cast<char*>(m) + guard_bytes());
    }
    return stacks_[i];
  }

 private:
  static size_t guard_bytes() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }
  std::vector<void*> stacks_;
};

inline thread_local StackPool t_stack_pool;

// -1: read TETRIS_EMU_SCHEDULE at each launch; 0: forward; 1: reverse.
inline thread_local int t_schedule_override = -1;

enum class Schedule { kForward, kReverse };

// Order in which the threads of a block start and are released from barriers. Kernels must
// give the same result either way (both orders are legal executions on a GPU).
inline void set_schedule(Schedule s) { t_schedule_override = s == Schedule::kReverse ? 1 : 0; }

inline bool schedule_reversed() {
  if (t_schedule_override >= 0) return t_schedule_override == 1;
  const char* env = std::getenv("TETRIS_EMU_SCHEDULE");
  return env != nullptr && std::strcmp(env, "reverse") == 0;
}

struct Launch {
  dim3 grid_dim, block_dim;
  uint3 block_idx{0, 0, 0};
  unsigned nthreads = 0;
  bool reversed = false;
  std::vector<Fiber> fibers;
  Fiber* current = nullptr;  // nullptr while the launching thread (the scheduler) runs

  // Run queue of runnable fibers that are not running: a ring of capacity nthreads.
  std::vector<unsigned> queue;
  unsigned queue_head = 0, queue_size = 0;
  unsigned exited = 0;

  // The block barrier being gathered.
  unsigned barrier_arrivals = 0;
  BarrierKind barrier_kind = BarrierKind::kPlain;
  std::source_location barrier_site;
  unsigned barrier_first = 0;
  uint64_t barrier_accumulator = 0;

  std::vector<unsigned char> dynamic_smem;
  void (*body)(void*) = nullptr;
  void* body_arg = nullptr;

  Context main_context;
  void* main_fake_stack = nullptr;
  const void* main_stack_bottom = nullptr;
  size_t main_stack_size = 0;
  std::string error;

  void push(Fiber& f) {
    queue[(queue_head + queue_size) % nthreads] = f.linear;
    ++queue_size;
  }
  Fiber* pop() {
    if (queue_size == 0) return nullptr;
    Fiber* f = &fibers[queue[queue_head]];
    queue_head = (queue_head + 1) % nthreads;
    --queue_size;
    return f;
  }
  // Lanes that exist in warp w (the last warp of a block may be partial).
  unsigned lanes_of_warp(unsigned w) const {
    unsigned count = nthreads - w * kWarpSize;
    return count >= kWarpSize ? 0xffffffffu : (1u << count) - 1u;
  }
};

inline thread_local Launch* t_launch = nullptr;

inline std::string where(const std::source_location& s) {
  std::string file = s.file_name();
  size_t at = file.rfind("csrc/");
  if (at != std::string::npos) file = file.substr(at + 5);
  return file + ":" + std::to_string(s.line());
}

inline bool same_site(const std::source_location& a, const std::source_location& b) {
  return a.line() == b.line() && a.column() == b.column() &&
         std::strcmp(a.file_name(), b.file_name()) == 0;
}

inline std::string describe(const uint3& v) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "(%u,%u,%u)", v.x, v.y, v.z);
  return buf;
}

inline std::string hex(unsigned v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

inline Launch& current_launch() {
  if (t_launch == nullptr || t_launch->current == nullptr)
    throw std::logic_error("tetris emulator: a CUDA built-in was used outside a kernel");
  return *t_launch;
}

inline Fiber& current_fiber() { return *current_launch().current; }

// Hands the CPU from `from` (nullptr: the launching thread) to `to` (nullptr: the launching
// thread). Returns when somebody hands it back to `from`, never if `from_exits`.
inline void transfer(Launch& L, Fiber* from, Fiber* to, bool from_exits) {
  Context& from_context = from ? from->context : L.main_context;
  Context& to_context = to ? to->context : L.main_context;
  L.current = to;
#ifdef TETRIS_EMU_ASAN
  void** fake = from_exits ? nullptr : (from ? &from->asan_fake_stack : &L.main_fake_stack);
  __sanitizer_start_switch_fiber(fake, to ? to->stack : L.main_stack_bottom,
                                 to ? kStackBytes : L.main_stack_size);
#else
  (void)from_exits;
#endif
  switch_context(from_context, to_context);
#ifdef TETRIS_EMU_ASAN
  __sanitizer_finish_switch_fiber(from ? from->asan_fake_stack : L.main_fake_stack, nullptr,
                                  nullptr);
#endif
}

// The running fiber stops (waiting, or for good) and the next runnable one continues; when
// none is runnable the launching thread gets the CPU back and sees finished or stuck fibers.
inline void suspend(Launch& L, Fiber& self, bool exits) { transfer(L, &self, L.pop(), exits); }

// Thrown inside a fiber to stop the launch: it unwinds the fiber's frames (so nothing leaks)
// up to fiber_main, which hands the message to the launching thread.
struct KernelFailure {
  std::string message;
};

// Stops the launch with `message` (thrown from the launch by the launching thread).
[[noreturn]] inline void fail(const std::string& message) {
  Launch* L = t_launch;
  std::string text = "tetris emulator: " + message;
  if (L == nullptr || L->current == nullptr) throw std::runtime_error(text);
  throw KernelFailure{text + " [block " + describe(L->block_idx) + ", thread " +
                      describe(L->current->thread_idx) + "]"};
}

inline void fiber_main() {
  Launch& L = *t_launch;
  Fiber& self = *L.current;
#ifdef TETRIS_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
  try {
    L.body(L.body_arg);
  } catch (KernelFailure& failure) {
    L.error = std::move(failure.message);
  } catch (const std::exception& e) {
    L.error = std::string("tetris emulator: the kernel threw: ") + e.what();
  }
  if (!L.error.empty()) {
    // The launch is over: the other fibers are abandoned where they wait.
    transfer(L, &self, nullptr, /*from_exits=*/true);
    std::abort();
  }
  self.wait = Wait::kExited;
  self.what = "exit";
  ++L.exited;
  suspend(L, self, /*exits=*/true);
  std::abort();  // an exited fiber is never resumed
}

// Every thread is stuck: say where each one waits, grouped by place.
inline std::string deadlock_report(const Launch& L) {
  std::map<std::string, std::pair<unsigned, unsigned>> groups;  // description -> (count, first)
  for (const Fiber& f : L.fibers) {
    if (f.linear >= L.nthreads) break;
    std::string d;
    if (f.wait == Wait::kExited) {
      d = "returned from the kernel";
    } else if (f.wait == Wait::kWarp) {
      d = std::string("wait in ") + f.what + "(mask " + hex(f.op.mask) + ") at " + where(f.site);
    } else {
      d = std::string("wait in ") + f.what + "() at " + where(f.site);
    }
    auto [it, fresh] = groups.try_emplace(d, 0u, f.linear);
    ++it->second.first;
  }
  std::string text = "tetris emulator: deadlock in block " + describe(L.block_idx) +
                     " of a launch of " + describe(L.grid_dim) + " blocks x " +
                     describe(L.block_dim) + " threads:";
  for (const auto& [d, g] : groups) {
    text += "\n  " + std::to_string(g.first) + " thread(s) " + d + " (first: thread " +
            describe(L.fibers[g.second].thread_idx) + ")";
  }
  text +=
      "\nEvery thread of a block must reach each __syncthreads(), and every lane named in a warp "
      "primitive's mask must call the same primitive with the same mask.";
  return text;
}

inline void run_block(Launch& L) {
  L.queue_head = L.queue_size = 0;
  L.exited = 0;
  L.barrier_arrivals = 0;
  L.error.clear();
  // Dynamic shared memory starts as garbage on a GPU; a fixed pattern makes a kernel that
  // reads it before writing fail the comparison with the CPU op instead of passing by luck.
  if (!L.dynamic_smem.empty()) std::memset(L.dynamic_smem.data(), 0xcd, L.dynamic_smem.size());
  const dim3 b = L.block_dim;
  for (unsigned i = 0; i < L.nthreads; ++i) {
    Fiber& f = L.fibers[i];
    f.linear = i;
    f.thread_idx = {i % b.x, (i / b.x) % b.y, i / (b.x * b.y)};
    f.lane = i % kWarpSize;
    f.warp = i / kWarpSize;
    f.wait = Wait::kRunnable;
    f.what = "";
    f.asan_fake_stack = nullptr;
    f.stack = t_stack_pool.get(i);
#ifdef TETRIS_EMU_ASAN
    // A fresh fiber starts on a clean stack: clear what earlier fibers left in ASan's shadow
    // memory (frames that never returned).
    __asan_unpoison_memory_region(f.stack, kStackBytes);
#endif
    make_context(f.context, f.stack, kStackBytes, fiber_main);
    hide_stack_from_asan_interceptor(f.context);
  }
  for (unsigned k = 0; k < L.nthreads; ++k) L.push(L.fibers[L.reversed ? L.nthreads - 1 - k : k]);
  transfer(L, nullptr, L.pop(), false);
  if (!L.error.empty()) {
    throw std::runtime_error(L.error);
  }
  if (L.exited != L.nthreads) {
    std::string report = deadlock_report(L);
    throw std::runtime_error(report);
  }
}

// Runs `body(arg)` as every thread of every block of a grid (the kernel launch).
inline void run_grid(dim3 grid, dim3 block, size_t dynamic_smem_bytes, void (*body)(void*),
                     void* arg) {
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  if (threads == 0 || threads > kMaxThreadsPerBlock || grid.x == 0 || grid.y == 0 || grid.z == 0)
    throw std::runtime_error("tetris emulator: invalid launch configuration: " + describe(grid) +
                             " blocks x " + describe(block) + " threads");
  if (t_launch != nullptr)
    throw std::logic_error("tetris emulator: a kernel launched another kernel");
  Launch L;
  L.grid_dim = grid;
  L.block_dim = block;
  L.nthreads = static_cast<unsigned>(threads);
  L.reversed = schedule_reversed();
  L.fibers.resize(L.nthreads);
  L.queue.resize(L.nthreads);
  L.dynamic_smem.resize(dynamic_smem_bytes);
  L.body = body;
  L.body_arg = arg;
#ifdef TETRIS_EMU_ASAN
  pthread_attr_t attr;
  pthread_getattr_np(pthread_self(), &attr);
  void* bottom = nullptr;
  pthread_attr_getstack(&attr, &bottom, &L.main_stack_size);
  pthread_attr_destroy(&attr);
  L.main_stack_bottom = bottom;
#endif
  struct Reset {
    ~Reset() { t_launch = nullptr; }
  } reset;
  t_launch = &L;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        L.block_idx = {x, y, z};
        run_block(L);
      }
}

inline unsigned char* dynamic_smem() {
  Launch& L = current_launch();
  return L.dynamic_smem.empty() ? nullptr : L.dynamic_smem.data();
}

// __syncthreads and its counting variants: every thread of the block must arrive, at the
// same place in the kernel. The last one to arrive releases the others.
inline uint64_t block_barrier(BarrierKind kind, uint64_t predicate, const char* what,
                              const std::source_location& site) {
  Launch& L = current_launch();
  Fiber& self = *L.current;
  if (L.barrier_arrivals == 0) {
    L.barrier_site = site;
    L.barrier_kind = kind;
    L.barrier_first = self.linear;
    L.barrier_accumulator = kind == BarrierKind::kAnd ? 1 : 0;
  } else if (!same_site(site, L.barrier_site) || kind != L.barrier_kind) {
    fail(std::string(what) + "() at " + where(site) + " while thread " +
         describe(L.fibers[L.barrier_first].thread_idx) + " waits in the barrier at " +
         where(L.barrier_site) + ": a barrier in divergent code");
  }
  switch (kind) {
    case BarrierKind::kPlain: break;
    case BarrierKind::kCount: L.barrier_accumulator += predicate != 0; break;
    case BarrierKind::kAnd: L.barrier_accumulator &= predicate != 0; break;
    case BarrierKind::kOr: L.barrier_accumulator |= predicate != 0; break;
  }
  if (++L.barrier_arrivals < L.nthreads) {
    self.wait = Wait::kBarrier;
    self.what = what;
    self.site = site;
    suspend(L, self, false);
    return self.op.result;
  }
  L.barrier_arrivals = 0;
  for (unsigned k = 0; k < L.nthreads; ++k) {
    Fiber& f = L.fibers[L.reversed ? L.nthreads - 1 - k : k];
    f.op.result = L.barrier_accumulator;
    if (&f != &self) {
      f.wait = Wait::kRunnable;
      L.push(f);
    }
  }
  return L.barrier_accumulator;
}

// The lane that the shuffle of `lane` reads, per CUDA's rules for each variant (a lane
// outside its `width`-wide segment reads its own value).
inline unsigned shuffle_source(const Collective& op, unsigned lane) {
  const unsigned width = static_cast<unsigned>(op.width);
  const unsigned segment = lane & ~(width - 1);
  switch (op.kind) {
    case WarpOpKind::kShfl: return segment + (static_cast<unsigned>(op.arg) & (width - 1));
    case WarpOpKind::kShflUp:
      return static_cast<int>(lane - segment) - op.arg >= 0 ? lane - op.arg : lane;
    case WarpOpKind::kShflDown:
      return (lane - segment) + static_cast<unsigned>(op.arg) < width ? lane + op.arg : lane;
    case WarpOpKind::kShflXor: {
      unsigned source = lane ^ static_cast<unsigned>(op.arg);
      return source < segment + width ? source : lane;
    }
    default: return lane;
  }
}

// Computes every participating lane's result; called by the last lane to arrive.
inline void complete_warp_op(Launch& L, unsigned warp, unsigned group, const char* what,
                             const std::source_location& site) {
  Fiber* lanes = &L.fibers[warp * kWarpSize];
  const WarpOpKind kind = L.current->op.kind;
  uint64_t ballot = 0;
  unsigned votes = 0;
  for (unsigned l = 0; l < kWarpSize; ++l) {
    if (!(group >> l & 1)) continue;
    if (lanes[l].op.kind != kind)
      fail(std::string(what) + "() at " + where(site) + " meets lane " + std::to_string(l) +
           " in " + lanes[l].what + "() at " + where(lanes[l].site) +
           " with the same mask: lanes of a warp primitive diverged");
    if (lanes[l].op.value != 0) {
      ballot |= 1ull << l;
      ++votes;
    }
  }
  const unsigned members = static_cast<unsigned>(__builtin_popcount(group));
  for (unsigned l = 0; l < kWarpSize; ++l) {
    if (!(group >> l & 1)) continue;
    Collective& op = lanes[l].op;
    switch (kind) {
      case WarpOpKind::kSyncWarp: op.result = 0; break;
      case WarpOpKind::kBallot: op.result = ballot; break;
      case WarpOpKind::kAny: op.result = votes > 0; break;
      case WarpOpKind::kAll: op.result = votes == members; break;
      case WarpOpKind::kMatchAny: {
        uint64_t peers = 0;
        for (unsigned m = 0; m < kWarpSize; ++m)
          if ((group >> m & 1) && lanes[m].op.value == op.value) peers |= 1ull << m;
        op.result = peers;
        break;
      }
      default: {
        unsigned source = shuffle_source(op, l);
        if (source >= kWarpSize || !(group >> source & 1))
          fail(std::string(what) + "() at " + where(site) + ": lane " + std::to_string(l) +
               " reads lane " + std::to_string(source) + ", which is not in the mask " +
               hex(op.mask) + " (or does not exist): its value would be undefined on a GPU");
        op.result = lanes[source].op.value;
      }
    }
  }
}

// A warp collective: the calling lane waits until every existing lane named in `op.mask` has
// called a warp primitive with the same mask; the last to arrive computes all results.
inline uint64_t warp_collective(Collective op, const char* what, const std::source_location& site) {
  Launch& L = current_launch();
  Fiber& self = *L.current;
  if (!(op.mask >> self.lane & 1))
    fail(std::string(what) + "() at " + where(site) + ": the calling lane " +
         std::to_string(self.lane) + " is not in the mask " + hex(op.mask));
  if (op.width <= 0 || op.width > static_cast<int>(kWarpSize) || (op.width & (op.width - 1)))
    fail(std::string(what) + "() at " + where(site) + ": width " + std::to_string(op.width) +
         " is not a power of two in [1, 32]");
  self.op = op;
  self.what = what;
  self.site = site;
  const unsigned group = op.mask & L.lanes_of_warp(self.warp);
  Fiber* lanes = &L.fibers[self.warp * kWarpSize];
  for (unsigned l = 0; l < kWarpSize; ++l) {
    if (l == self.lane || !(group >> l & 1)) continue;
    if (lanes[l].wait != Wait::kWarp || lanes[l].op.mask != op.mask) {
      self.wait = Wait::kWarp;
      suspend(L, self, false);
      return self.op.result;
    }
  }
  complete_warp_op(L, self.warp, group, what, site);
  for (unsigned k = 0; k < kWarpSize; ++k) {
    unsigned l = L.reversed ? kWarpSize - 1 - k : k;
    if (l == self.lane || !(group >> l & 1)) continue;
    lanes[l].wait = Wait::kRunnable;
    L.push(lanes[l]);
  }
  return self.op.result;
}

}  // namespace tetris::emu_rt
