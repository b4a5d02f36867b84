// CPU verify_sampling: lossless rejection-sampling verification of a draft tree (docs/ops.md).
// Randomness comes from the caller's uniforms: uniforms[b, s] decides slot s's acceptance
// test, uniforms[b, 0] the final sample.
#include <torch/library.h>

#include <vector>

#include "ops/verify_sampling/acceptance.h"
#include "ops/verify_sampling/checks.h"
#include "verify_walk/cpu_walk.h"

namespace tetris {
namespace {

struct SamplingInputs {
  IndexMatrix tokens;
  at::TensorAccessor<float, 3> target;
  std::optional<at::TensorAccessor<float, 3>> draft;  // none: deterministic children
  at::TensorAccessor<float, 2> uniforms;
  int64_t vocab;
};

// float32 sum in token order: the order the docs fix for the CPU.
float sequential_sum(const std::vector<float>& p) {
  float sum = 0.f;
  for (float x : p) sum += x;
  return sum;
}

// Smallest t with p[t] > 0 and cumsum(p)[t] > u0 * mass; if rounding leaves none (u0 * mass
// can round up to the total), the last t with p[t] > 0; -1 for a row without mass.
int64_t inverse_cdf(const std::vector<float>& p, float mass, float u0) {
  const float threshold = sample_threshold(u0, mass);
  float cumsum = 0.f;
  int64_t last = -1;
  for (int64_t t = 0; t < static_cast<int64_t>(p.size()); ++t) {
    if (!(p[t] > 0.f)) continue;
    cumsum += p[t];
    last = t;
    if (cumsum > threshold) return t;
  }
  return last;
}

class SamplingWalker {
 public:
  explicit SamplingWalker(const SamplingInputs& in) : in_(in), p_(in.vocab) {}

  // The working distribution starts as the target's at this slot.
  void enter(int64_t b, int64_t slot) {
    const auto row = in_.target[b][slot];
    for (int64_t t = 0; t < in_.vocab; ++t) p_[t] = prob_weight(row[t]);
    mass_ = sequential_sum(p_);
  }

  bool try_child(int64_t b, int64_t slot, int64_t child) {
    const int64_t x = in_.tokens(b, child);
    if (!token_in_vocab(x, in_.vocab)) return false;  // skipped: p is left as it is
    const float u = in_.uniforms[b][child];
    if (in_.draft) {
      const auto q = (*in_.draft)[b][slot];
      if (accept_drafted(u, prob_weight(q[x]), p_[x], mass_)) return true;
      for (int64_t t = 0; t < in_.vocab; ++t)
        p_[t] = residual_drafted(p_[t], prob_weight(q[t]), mass_);
    } else {
      if (accept_deterministic(u, p_[x], mass_)) return true;
      p_[x] = 0.f;
    }
    mass_ = sequential_sum(p_);
    return false;
  }

  int64_t bonus(int64_t b, int64_t slot) {
    if (!(mass_ > 0.f)) enter(b, slot);  // nothing left of p: sample from the target itself
    return inverse_cdf(p_, mass_, in_.uniforms[b][0]);
  }

 private:
  const SamplingInputs& in_;
  std::vector<float> p_;
  float mass_ = 0.f;
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_sampling_cpu(
    const at::Tensor& slot_tokens, const at::Tensor& slot_parent, const at::Tensor& target_probs,
    const std::optional<at::Tensor>& draft_probs, const at::Tensor& uniforms) {
  check_verify_sampling_args(slot_tokens, slot_parent, target_probs, draft_probs, uniforms);
  SamplingInputs in{index_matrix(slot_tokens), target_probs.accessor<float, 3>(), std::nullopt,
                    uniforms.accessor<float, 2>(), target_probs.size(2)};
  if (draft_probs) in.draft = draft_probs->accessor<float, 3>();
  return walk_verification_blocks(slot_tokens, slot_parent, [&] { return SamplingWalker(in); });
}

}  // namespace

TORCH_LIBRARY_IMPL(tetris, CPU, m) { m.impl("verify_sampling", &verify_sampling_cpu); }

}  // namespace tetris
