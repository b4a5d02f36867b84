// TETRIS_CPU_MULTIVERSION: compile a hot CPU function for baseline x86-64, x86-64-v3 (AVX2,
// FMA) and x86-64-v4 (AVX-512) and pick the best one for the machine once, at load time
// (GNU ifunc), so that the wheel runs everywhere and still uses wide vectors where they exist.
// Elsewhere (other architectures, other compilers) it is a plain function.
#pragma once

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#define TETRIS_CPU_MULTIVERSION \
  __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define TETRIS_CPU_MULTIVERSION
#endif
