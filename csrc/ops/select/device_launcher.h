// select on CUDA (tetris::select) and through the emulation harness (tetris_emu::select):
// checks the arguments exactly as the CPU op does, allocates the outputs and the workspace
// on the input's device (the caching allocator), and launches csrc/ops/select/kernel.cuh.
// Instantiated for both in csrc/ops/device_registrations.cpp.
#pragma once

#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>

#include <optional>
#include <tuple>

#include "common/device_launch.h"
#include "ops/select/checks.h"
#include "ops/select/params.h"

namespace tetris {

template <KernelLauncher<SelectParams> launch>
std::tuple<at::Tensor, at::Tensor> select_on_device(
    const at::Tensor& scores, int64_t budget, const std::optional<at::Tensor>& parents,
    const std::optional<at::Tensor>& max_per_request, std::optional<double> min_score) {
  check_select_args(scores, budget, parents, max_per_request, min_score);
  const c10::DeviceGuard guard(scores.device());
  const int64_t B = scores.size(0), N = scores.size(1);
  at::Tensor selected = at::empty({B, N}, scores.options().dtype(at::kBool));
  at::Tensor counts = at::empty({B}, scores.options().dtype(at::kInt));
  if (B * N == 0) {
    counts.zero_();  // N = 0: B requests with nothing selected
    return {selected, counts};
  }
  at::Tensor workspace =
      at::empty({select_workspace_words(B, N)}, scores.options().dtype(at::kInt));

  SelectParams p;
  p.scores = scores.data_ptr<float>();
  p.batch = B;
  p.candidates = N;
  copy_strides(scores, p.scores_stride);
  p.parents = index_matrix(parents);
  p.caps = index_matrix(max_per_request);
  p.min_key = select_min_eligible_key(min_score);
  p.budget = budget;
  p.selected = selected.data_ptr<bool>();
  p.counts = counts.data_ptr<int32_t>();
  p.workspace = reinterpret_cast<uint32_t*>(workspace.data_ptr<int32_t>());
  launch_kernels(launch, p, scores);
  return {selected, counts};
}

}  // namespace tetris
