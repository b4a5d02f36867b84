// draft_cumprod on CUDA (tetris::draft_cumprod) and through the emulation harness
// (tetris_emu::draft_cumprod): checks the arguments exactly as the CPU op does, allocates the
// outputs on the input's device, and launches csrc/ops/draft_cumprod/kernel.cuh.
// Instantiated for both in csrc/ops/device_registrations.cpp.
#pragma once

#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>

#include <optional>
#include <tuple>

#include "common/device_launch.h"
#include "ops/draft_cumprod/checks.h"
#include "ops/draft_cumprod/logsumexp.h"
#include "ops/draft_cumprod/params.h"

namespace tetris {

inline FloatType float_type(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf: return FloatType::kFloat16;
    case at::kBFloat16: return FloatType::kBFloat16;
    default: return FloatType::kFloat32;
  }
}

template <KernelLauncher<DraftCumprodParams> launch>
std::tuple<at::Tensor, at::Tensor> draft_cumprod_on_device(const at::Tensor& logits,
                                                           const at::Tensor& tokens,
                                                           const std::optional<at::Tensor>& parents,
                                                           double temperature) {
  check_draft_cumprod_args(logits, tokens, parents, temperature);
  const c10::DeviceGuard guard(logits.device());
  const int64_t B = logits.size(0), N = logits.size(1), V = logits.size(2);
  const auto options = logits.options().dtype(at::kFloat);
  at::Tensor token_logprobs = at::empty({B, N}, options);
  at::Tensor cum_logprobs = at::empty({B, N}, options);
  if (B * N == 0) return {token_logprobs, cum_logprobs};
  at::Tensor on_valid_path = at::empty({B, N}, logits.options().dtype(at::kByte));

  DraftCumprodParams p;
  p.logits = logits.data_ptr();
  p.logits_type = float_type(logits);
  p.batch = B;
  p.candidates = N;
  p.vocab = V;
  copy_strides(logits, p.logits_stride);
  p.tokens = index_matrix(tokens);
  p.parents = index_matrix(parents);
  p.inverse_temperature = inverse_temperature(temperature);
  p.token_logprobs = token_logprobs.data_ptr<float>();
  p.cum_logprobs = cum_logprobs.data_ptr<float>();
  p.on_valid_path = on_valid_path.data_ptr<uint8_t>();
  launch_kernels(launch, p, logits);
  return {token_logprobs, cum_logprobs};
}

}  // namespace tetris
