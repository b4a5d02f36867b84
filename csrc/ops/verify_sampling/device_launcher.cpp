// verify_sampling on a device: the same argument checks as the CPU op, outputs and a [B, V]
// scratch row per request from the caching allocator, one launch of
// csrc/ops/verify_sampling/kernel.cuh on the current stream. Registered for CUDA (tetris) and for
// the CPU emulation harness (tetris_emu).
#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "ops/verify_sampling/checks.h"
#include "common/device_launch.h"
#include "ops/verify_sampling/params.h"

namespace tetris {
namespace {

template <KernelLauncher<VerifySamplingParams> launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_sampling_on_device(
    const at::Tensor& slot_tokens, const at::Tensor& slot_parent, const at::Tensor& target_probs,
    const std::optional<at::Tensor>& draft_probs, const at::Tensor& uniforms) {
  check_verify_sampling_args(slot_tokens, slot_parent, target_probs, draft_probs, uniforms);
  const c10::DeviceGuard guard(slot_tokens.device());
  const int64_t B = slot_tokens.size(0);
  const int64_t M = slot_tokens.size(1);
  const int64_t V = target_probs.size(2);
  const auto long_opts = slot_tokens.options().dtype(at::kLong);
  at::Tensor accepted_slots = at::empty({B, M}, long_opts);
  at::Tensor num_accepted = at::empty({B}, slot_tokens.options().dtype(at::kInt));
  at::Tensor out_tokens = at::empty({B, M}, long_opts);
  // The working distribution after a rejection (1/M of target_probs' size).
  at::Tensor scratch = at::empty({B, V}, target_probs.options());

  VerifySamplingParams params;
  params.batch = B;
  params.slots = M;
  params.vocab = V;
  params.slot_tokens = index_matrix(slot_tokens);
  params.slot_parent = index_matrix(slot_parent);
  params.target_probs = target_probs.data_ptr<float>();
  params.target_stride0 = target_probs.stride(0);
  params.target_stride1 = target_probs.stride(1);
  params.target_stride2 = target_probs.stride(2);
  if (draft_probs.has_value()) {
    params.draft_probs = draft_probs->data_ptr<float>();
    params.draft_stride0 = draft_probs->stride(0);
    params.draft_stride1 = draft_probs->stride(1);
    params.draft_stride2 = draft_probs->stride(2);
  }
  params.uniforms = uniforms.data_ptr<float>();
  params.uniforms_stride0 = uniforms.stride(0);
  params.uniforms_stride1 = uniforms.stride(1);
  params.scratch = scratch.data_ptr<float>();
  params.accepted_slots = accepted_slots.data_ptr<int64_t>();
  params.num_accepted = num_accepted.data_ptr<int32_t>();
  params.out_tokens = out_tokens.data_ptr<int64_t>();
  launch_kernels(launch, params, slot_tokens);
  return {accepted_slots, num_accepted, out_tokens};
}

}  // namespace

#ifdef TETRIS_WITH_CUDA
TORCH_LIBRARY_IMPL(tetris, CUDA, m) {
  m.impl("verify_sampling", &verify_sampling_on_device<launch_verify_sampling_cuda>);
}
#endif

#ifdef TETRIS_EMULATION
TORCH_LIBRARY_IMPL(tetris_emu, CPU, m) {
  m.impl("verify_sampling", &verify_sampling_on_device<launch_verify_sampling_emulated>);
}
#endif

}  // namespace tetris
