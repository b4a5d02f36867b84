// verify_greedy on a device: the same argument checks as the CPU op, outputs from the caching
// allocator, one launch of csrc/ops/verify_greedy/kernel.cuh on the current stream. Registered for
// CUDA (tetris) and for the CPU emulation harness (tetris_emu).
#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "common/device_launch.h"
#include "ops/verify_greedy/checks.h"
#include "ops/verify_greedy/params.h"
#include "verify_walk/device_outputs.h"

namespace tetris {
namespace {

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

}  // namespace

#ifdef TETRIS_WITH_CUDA
TORCH_LIBRARY_IMPL(tetris, CUDA, m) {
  m.impl("verify_greedy", &verify_greedy_on_device<launch_verify_greedy_cuda>);
}
#endif

#ifdef TETRIS_EMULATION
TORCH_LIBRARY_IMPL(tetris_emu, CPU, m) {
  m.impl("verify_greedy", &verify_greedy_on_device<launch_verify_greedy_emulated>);
}
#endif

}  // namespace tetris
