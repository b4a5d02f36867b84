// Execution contexts for the emulator's fibers: make one on a fresh stack, switch between two.
//
// Portable version: glibc's getcontext / makecontext / swapcontext. swapcontext also saves
// and restores the signal mask, a system call per switch (about 0.5 us here), and the
// emulator switches at every barrier and warp primitive of every thread. On x86-64 the
// switch is therefore a dozen instructions of our own (the callee-saved registers and the
// floating-point control words, which is all the SysV ABI asks a function call to preserve),
// while glibc still creates the contexts. Define TETRIS_EMU_UCONTEXT=1 to use swapcontext
// everywhere (tests/test_emulation_harness.py checks both).
#pragma once

#include <ucontext.h>

#include <cstddef>
#include <cstdint>

#if defined(__x86_64__) && !defined(TETRIS_EMU_UCONTEXT)
#define TETRIS_EMU_FAST_SWITCH 1
#endif

#ifdef TETRIS_EMU_FAST_SWITCH
// tetris_emu_switch(save, load): pushes the callee-saved registers and the x87 / SSE control
// words, stores the stack pointer in *save, loads `load` and pops the same from there.
// Weak, so that every translation unit that includes the harness may carry a copy.
extern "C" void tetris_emu_switch(void** save, void* load);
asm(R"(
  .text
  .weak tetris_emu_switch
  .hidden tetris_emu_switch
  .type tetris_emu_switch, @function
  .p2align 4
tetris_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $16, %rsp
  fnstcw (%rsp)
  stmxcsr 8(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  fldcw (%rsp)
  ldmxcsr 8(%rsp)
  addq $16, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size tetris_emu_switch, .-tetris_emu_switch
)");
#endif

namespace tetris::emu_rt {

// Where a suspended fiber (or the launching thread) resumes.
struct Context {
#ifdef TETRIS_EMU_FAST_SWITCH
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
};

// Prepares `c` so that switching to it runs entry() on [stack, stack + size). entry must
// never return (it switches away for good instead).
inline void make_context(Context& c, void* stack, size_t size, void (*entry)()) {
#ifdef TETRIS_EMU_FAST_SWITCH
  // The frame tetris_emu_switch pops, built at the top of the stack: control words, six
  // registers, then entry as the return address, above it a null "caller" so that entry
  // starts with the stack alignment of a called function.
  auto top = (reinterpret_cast<uintptr_t>(stack) + size) & ~uintptr_t{15};
  auto* frame = reinterpret_cast<uint64_t*>(top) - 10;
  uint16_t fpu_control;
  uint32_t sse_control;
  asm volatile("fnstcw %0" : "=m"(fpu_control));
  asm volatile("stmxcsr %0" : "=m"(sse_control));
  frame[0] = fpu_control;
  frame[1] = sse_control;
  for (int r = 2; r < 8; ++r) frame[r] = 0;  // r15, r14, r13, r12, rbx, rbp
  frame[8] = reinterpret_cast<uint64_t>(entry);
  frame[9] = 0;
  c.sp = frame;
#else
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
#endif
}

// After make_context: hide the stack from AddressSanitizer's swapcontext interceptor, which
// would otherwise clear its shadow (live frames' redzones included) at every switch to it.
inline void hide_stack_from_asan_interceptor(Context& c) {
#ifndef TETRIS_EMU_FAST_SWITCH
  c.uc.uc_stack.ss_size = 0;
#else
  (void)c;
#endif
}

// Saves the running context in `from` and continues `to`.
inline void switch_context(Context& from, Context& to) {
#ifdef TETRIS_EMU_FAST_SWITCH
  tetris_emu_switch(&from.sp, to.sp);
#else
  swapcontext(&from.uc, &to.uc);
#endif
}

}  // namespace tetris::emu_rt
