// verify_sampling kernel, written once for CUDA and the CPU emulation harness. Semantics:
// docs/ops.md; the CPU twin: csrc/ops/verify_sampling/cpu.cpp, with which it shares the float32
// decisions (csrc/ops/verify_sampling/acceptance.h).
//
// One block per request walks its verification block (verify_walk/kernel_walk.cuh). The working
// distribution p is the target row of the current slot until a rejection changes it; from then
// on it lives in the request's scratch row. Everything over the vocabulary is a block-wide
// pass, kPerThread consecutive tokens per thread (one 16-byte load when the row is contiguous):
// the mass sum(p) on entering a slot and after each rejection, the rejection's rewrite of p,
// and the final inverse-CDF sample (a block-wide scan, tile by tile).
//
// Sums run in a different order than the CPU's sequential ones, so on arbitrary floats a sum
// (and a sample at a CDF boundary) can differ in the last bit; with dyadic probabilities every
// partial sum is exact and the outputs are identical (tests/test_verify_sampling.py).
#pragma once

#include "kernel_common/backend.cuh"
#include "ops/verify_sampling/acceptance.h"
#include "ops/verify_sampling/params.h"
#include "verify_walk/kernel_walk.cuh"

namespace tetris::TETRIS_KERNEL_NS {
namespace verify_sampling_kernels {

constexpr unsigned kMaxThreads = 1024;
constexpr int64_t kPerThread = 4;  // consecutive tokens per thread and pass: one float4

struct Max {
  __device__ __forceinline__ int64_t operator()(int64_t a, int64_t b) const {
    return a < b ? b : a;
  }
};

// A row of V probabilities with its stride (in elements).
struct ProbRow {
  const float* data;
  int64_t stride;
};

// The weights (prob_weight: what counts as probability) of tokens first .. first+kPerThread-1,
// 0 past the end of the vocabulary.
__device__ __forceinline__ void load_weights(const ProbRow& row, int64_t first, int64_t V,
                                             float (&w)[kPerThread]) {
  if (row.stride == 1 && first + kPerThread <= V &&
      reinterpret_cast<uintptr_t>(row.data + first) % sizeof(float4) == 0) {
    const float4 v = *reinterpret_cast<const float4*>(row.data + first);
    w[0] = prob_weight(v.x);
    w[1] = prob_weight(v.y);
    w[2] = prob_weight(v.z);
    w[3] = prob_weight(v.w);
    return;
  }
  for (int64_t j = 0; j < kPerThread; ++j) {
    const int64_t t = first + j;
    w[j] = t < V ? prob_weight(row.data[t * row.stride]) : 0.f;
  }
}

// The tokens of this thread in the tile starting at `tile`.
__device__ __forceinline__ int64_t first_token(int64_t tile) {
  return tile + static_cast<int64_t>(threadIdx.x) * kPerThread;
}
__device__ __forceinline__ int64_t tile_tokens() { return blockDim.x * kPerThread; }

// sum(p) over the vocabulary.
__device__ float block_mass(const ProbRow& row, int64_t V) {
  float sum = 0.f;
  for (int64_t tile = 0; tile < V; tile += tile_tokens()) {
    float w[kPerThread];
    load_weights(row, first_token(tile), V, w);
    for (int64_t j = 0; j < kPerThread; ++j) sum += w[j];
  }
  return block_all_reduce(sum, Sum{});
}

// Inverse CDF: the smallest t with p[t] > 0 and cumsum(p)[t] > u0 * mass; if rounding leaves
// none, the last t with p[t] > 0; -1 for a row without mass (as sample_threshold and the CPU's
// inverse_cdf). The running sum is a block-wide exclusive scan of the threads' chunks plus
// the carry of the earlier tiles.
__device__ int64_t inverse_cdf(const ProbRow& row, int64_t V, float mass, float u0) {
  const float threshold = sample_threshold(u0, mass);
  float carry = 0.f;
  int64_t last_positive = -1;
  for (int64_t tile = 0; tile < V; tile += tile_tokens()) {
    const int64_t first = first_token(tile);
    float w[kPerThread];
    load_weights(row, first, V, w);
    float chunk = 0.f;
    for (int64_t j = 0; j < kPerThread; ++j) chunk += w[j];
    const ScanResult<float> scan = block_exclusive_sum(chunk);
    float cumsum = carry + scan.exclusive;
    int64_t hit = V;
    for (int64_t j = 0; j < kPerThread; ++j) {
      if (!(w[j] > 0.f)) continue;
      cumsum += w[j];
      last_positive = first + j;
      if (cumsum > threshold) {
        hit = first + j;
        break;
      }
    }
    hit = block_all_reduce(hit, verify_walk::Min{});
    if (hit < V) return hit;
    carry += scan.total;
  }
  return block_all_reduce(last_positive, Max{});
}

// Lossless verification (docs/ops.md): children drawn from q = draft_probs[b, slot] are
// accepted when u * q(x) * mass < p(x), else p <- max(p - mass * q, 0); deterministic children
// (no draft_probs) when u * mass < p(x), else p(x) <- 0. The bonus token is sampled from what
// is left of p (from the target row itself when nothing is left).
class SamplingWalker {
 public:
  __device__ SamplingWalker(const VerifySamplingParams& p, int64_t b)
      : p_(p), b_(b), V_(p.vocab), scratch_(p.scratch + b * p.vocab) {}

  __device__ void enter(int64_t slot) {
    p_row_ = target_row(slot);
    mass_ = block_mass(p_row_, V_);
  }

  __device__ bool offer(int64_t /*slot*/, int64_t child) const {
    // A child with an invalid token is skipped: never tried, p left as it is.
    return token_in_vocab(p_.slot_tokens(b_, child), V_);
  }

  __device__ bool try_child(int64_t slot, int64_t child) {
    const int64_t x = p_.slot_tokens(b_, child);
    const float u = p_.uniforms[b_ * p_.uniforms_stride[0] + child * p_.uniforms_stride[1]];
    const float p_x = prob_weight(p_row_.data[x * p_row_.stride]);
    if (p_.draft_probs) {
      const ProbRow q = draft_row(slot);
      if (accept_drafted(u, prob_weight(q.data[x * q.stride]), p_x, mass_)) return true;
    } else if (accept_deterministic(u, p_x, mass_)) {
      return true;
    }
    reject(slot, x);
    return false;
  }

  __device__ int64_t bonus(int64_t slot) {
    if (!(mass_ > 0.f)) enter(slot);  // nothing left of p: sample from the target itself
    return inverse_cdf(p_row_, V_, mass_, p_.uniforms[b_ * p_.uniforms_stride[0]]);
  }

 private:
  __device__ ProbRow target_row(int64_t slot) const {
    return {p_.target_probs + b_ * p_.target_stride[0] + slot * p_.target_stride[1],
            p_.target_stride[2]};
  }
  __device__ ProbRow draft_row(int64_t slot) const {
    return {p_.draft_probs + b_ * p_.draft_stride[0] + slot * p_.draft_stride[1],
            p_.draft_stride[2]};
  }

  // p <- the residual after rejecting token x, written to the scratch row (in place once p is
  // there: each thread rewrites the tokens it reads), and its new mass.
  __device__ void reject(int64_t slot, int64_t x) {
    __syncthreads();  // every thread has read p[x] for the test before p[x] is overwritten
    const bool drafted = p_.draft_probs != nullptr;
    const ProbRow q = drafted ? draft_row(slot) : ProbRow{nullptr, 0};
    float sum = 0.f;
    for (int64_t tile = 0; tile < V_; tile += tile_tokens()) {
      const int64_t first = first_token(tile);
      float p[kPerThread], q_w[kPerThread] = {};
      load_weights(p_row_, first, V_, p);
      if (drafted) load_weights(q, first, V_, q_w);
      for (int64_t j = 0; j < kPerThread && first + j < V_; ++j) {
        const float value =
            drafted ? residual_drafted(p[j], q_w[j], mass_) : (first + j == x ? 0.f : p[j]);
        scratch_[first + j] = value;
        sum += value;
      }
    }
    p_row_ = {scratch_, 1};
    mass_ = block_all_reduce(sum, Sum{});
  }

  const VerifySamplingParams& p_;
  int64_t b_;
  int64_t V_;
  float* scratch_;
  ProbRow p_row_{nullptr, 0};  // the working distribution p
  float mass_ = 0.f;           // sum(p), the same value in every thread
};

}  // namespace verify_sampling_kernels

// The launcher, compiled once per backend: kernel.cu wraps it as launch_verify_sampling_cuda,
// kernel_emulated.cpp as launch_verify_sampling_emulated (both declared in params.h).
inline void launch_verify_sampling(const VerifySamplingParams& params, void* stream) {
  namespace k = verify_sampling_kernels;
  // Enough threads for one tile to cover the vocabulary, up to kMaxThreads.
  const int64_t chunks = (params.vocab + k::kPerThread - 1) / k::kPerThread;
  verify_walk::launch_walk<k::SamplingWalker, k::kMaxThreads>(params, chunks, stream);
}

}  // namespace tetris::TETRIS_KERNEL_NS
