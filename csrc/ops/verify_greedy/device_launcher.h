// verify_greedy on a device: the same argument checks as the CPU op, outputs from the caching
// allocator, one launch of csrc/ops/verify_greedy/kernel.cuh on the current stream.
// Instantiated for CUDA and the emulator in csrc/ops/device_registrations.cpp.
#pragma once

#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>

#include <optional>
#include <tuple>

#include "common/device_launch.h"
#include "ops/verify_greedy/checks.h"
#include "ops/verify_greedy/params.h"
#include "verify_walk/device_outputs.h"

namespace tetris {

template <KernelLauncher<VerifyGreedyParams> launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_greedy_on_device(
    const at::Tensor& slot_tokens, const at::Tensor& slot_parent, const at::Tensor& target_tokens) {
  check_verify_greedy_args(slot_tokens, slot_parent, target_tokens);
  const c10::DeviceGuard guard(slot_tokens.device());
  VerifyGreedyParams params;
  auto outputs = verify_walk_outputs(slot_tokens, slot_parent, params);
  params.target_tokens = index_matrix(target_tokens);
  launch_kernels(launch, params, slot_tokens);
  return outputs;
}

}  // namespace tetris
