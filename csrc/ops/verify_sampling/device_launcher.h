// verify_sampling on a device: the same argument checks as the CPU op, outputs and a [B, V]
// scratch row per request from the caching allocator, one launch of
// csrc/ops/verify_sampling/kernel.cuh on the current stream.
// Instantiated for CUDA and the emulator in csrc/ops/device_registrations.cpp.
#pragma once

#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>

#include <optional>
#include <tuple>

#include "common/device_launch.h"
#include "ops/verify_sampling/checks.h"
#include "ops/verify_sampling/params.h"
#include "verify_walk/device_outputs.h"

namespace tetris {

template <KernelLauncher<VerifySamplingParams> launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_sampling_on_device(
    const at::Tensor& slot_tokens, const at::Tensor& slot_parent, const at::Tensor& target_probs,
    const std::optional<at::Tensor>& draft_probs, const at::Tensor& uniforms) {
  check_verify_sampling_args(slot_tokens, slot_parent, target_probs, draft_probs, uniforms);
  const c10::DeviceGuard guard(slot_tokens.device());
  VerifySamplingParams params;
  auto outputs = verify_walk_outputs(slot_tokens, slot_parent, params);
  params.vocab = target_probs.size(2);
  // The working distribution after a rejection (1/M of target_probs' size).
  at::Tensor scratch = at::empty({params.batch, params.vocab}, target_probs.options());
  params.target_probs = target_probs.data_ptr<float>();
  copy_strides(target_probs, params.target_stride);
  if (draft_probs.has_value()) {
    params.draft_probs = draft_probs->data_ptr<float>();
    copy_strides(*draft_probs, params.draft_stride);
  }
  params.uniforms = uniforms.data_ptr<float>();
  copy_strides(uniforms, params.uniforms_stride);
  params.scratch = scratch.data_ptr<float>();
  launch_kernels(launch, params, slot_tokens);
  return outputs;
}

}  // namespace tetris
