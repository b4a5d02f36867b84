// verify_greedy on a device: the same argument checks as the CPU op, outputs from the caching
// allocator, one launch of csrc/ops/verify_greedy/kernel.cuh on the current stream. Registered for
// CUDA (tetris) and for the CPU emulation harness (tetris_emu).
#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "ops/verify_greedy/checks.h"
#include "common/device_launch.h"
#include "ops/verify_greedy/params.h"

namespace tetris {
namespace {

template <KernelLauncher<VerifyGreedyParams> launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_greedy_on_device(
    const at::Tensor& slot_tokens, const at::Tensor& slot_parent, const at::Tensor& target_tokens) {
  check_verify_greedy_args(slot_tokens, slot_parent, target_tokens);
  const c10::DeviceGuard guard(slot_tokens.device());
  const int64_t B = slot_tokens.size(0);
  const int64_t M = slot_tokens.size(1);
  const auto long_opts = slot_tokens.options().dtype(at::kLong);
  at::Tensor accepted_slots = at::empty({B, M}, long_opts);
  at::Tensor num_accepted = at::empty({B}, slot_tokens.options().dtype(at::kInt));
  at::Tensor out_tokens = at::empty({B, M}, long_opts);
  VerifyGreedyParams params;
  params.batch = B;
  params.slots = M;
  params.slot_tokens = index_matrix(slot_tokens);
  params.slot_parent = index_matrix(slot_parent);
  params.target_tokens = index_matrix(target_tokens);
  params.accepted_slots = accepted_slots.data_ptr<int64_t>();
  params.num_accepted = num_accepted.data_ptr<int32_t>();
  params.out_tokens = out_tokens.data_ptr<int64_t>();
  launch_kernels(launch, params, slot_tokens);
  return {accepted_slots, num_accepted, out_tokens};
}

}  // namespace

#ifdef TETRIS_WITH_CUDA
TORCH_LIBRARY_IMPL(tetris, CUDA, m) { m.impl("verify_greedy", &verify_greedy_on_device<launch_verify_greedy_cuda>); }
#endif

#ifdef TETRIS_EMULATION
TORCH_LIBRARY_IMPL(tetris_emu, CPU, m) { m.impl("verify_greedy", &verify_greedy_on_device<launch_verify_greedy_emulated>); }
#endif

}  // namespace tetris
