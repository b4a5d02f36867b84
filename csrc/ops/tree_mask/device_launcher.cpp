// tree_mask and tree_mask_packed on a device: the same argument checks as the CPU ops, outputs
// from the caching allocator, one launch of the kernels in csrc/ops/tree_mask/kernel.cuh on the
// current stream. Registered for CUDA (tetris) and for the CPU emulation harness (tetris_emu).
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "ops/tree_mask/checks.h"
#include "common/device_launch.h"
#include "host_device/tree_slots.h"
#include "ops/tree_mask/params.h"

namespace tetris {
namespace {

TreeMaskParams tree_mask_inputs(const at::Tensor& selected,
                                const std::optional<at::Tensor>& parents,
                                const at::Tensor& prefix_lens) {
  TreeMaskParams params;
  params.batch = selected.size(0);
  params.candidates = selected.size(1);
  params.selected = selected.data_ptr<bool>();
  copy_strides(selected, params.selected_stride);
  params.parents = index_matrix(parents);
  params.prefix_lens = index_matrix(prefix_lens);
  return params;
}

template <KernelLauncher<TreeMaskParams> launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tree_mask_on_device(
    const at::Tensor& selected, const std::optional<at::Tensor>& parents,
    const at::Tensor& prefix_lens) {
  check_tree_mask_args("tree_mask", selected, parents, prefix_lens);
  const c10::DeviceGuard guard(selected.device());
  const int64_t B = selected.size(0);
  const int64_t M = selected.size(1) + 1;
  const auto long_opts = selected.options().dtype(at::kLong);
  at::Tensor slot_index = at::empty({B, M}, long_opts);
  at::Tensor slot_parent = at::empty({B, M}, long_opts);
  at::Tensor positions = at::empty({B, M}, long_opts);
  at::Tensor mask = at::empty({B, M, M}, selected.options().dtype(at::kBool));
  TreeMaskParams params = tree_mask_inputs(selected, parents, prefix_lens);
  params.slot_index = slot_index.data_ptr<int64_t>();
  params.slot_parent = slot_parent.data_ptr<int64_t>();
  params.positions = positions.data_ptr<int64_t>();
  params.mask = mask.data_ptr<bool>();
  launch_kernels(launch, params, selected);
  return {slot_index, slot_parent, positions, mask};
}

template <KernelLauncher<TreeMaskParams> launch>
std::tuple<at::Tensor, at::Tensor> tree_mask_packed_on_device(
    const at::Tensor& selected, const std::optional<at::Tensor>& parents,
    const at::Tensor& prefix_lens) {
  check_tree_mask_packed_args(selected, parents, prefix_lens);
  const c10::DeviceGuard guard(selected.device());
  const int64_t B = selected.size(0);
  const int64_t M = selected.size(1) + 1;
  if (B == 0) {  // nothing to launch: the offsets of an empty batch
    return {at::zeros({1}, selected.options().dtype(at::kInt)),
            at::empty({0, M, packed_row_bytes(M)}, selected.options().dtype(at::kByte))};
  }
  const auto long_opts = selected.options().dtype(at::kLong);
  // The kernel builds the mask rows from the slot layout; tree_mask_packed does not return it.
  at::Tensor slot_index = at::empty({B, M}, long_opts);
  at::Tensor slot_parent = at::empty({B, M}, long_opts);
  at::Tensor cu_seqlens = at::empty({B + 1}, selected.options().dtype(at::kInt));
  at::Tensor packed_mask =
      at::empty({B, M, packed_row_bytes(M)}, selected.options().dtype(at::kByte));
  TreeMaskParams params = tree_mask_inputs(selected, parents, prefix_lens);
  params.slot_index = slot_index.data_ptr<int64_t>();
  params.slot_parent = slot_parent.data_ptr<int64_t>();
  params.cu_seqlens = cu_seqlens.data_ptr<int32_t>();
  params.packed_mask = packed_mask.data_ptr<uint8_t>();
  launch_kernels(launch, params, selected);
  return {cu_seqlens, packed_mask};
}

}  // namespace

#ifdef TETRIS_WITH_CUDA
TORCH_LIBRARY_IMPL(tetris, CUDA, m) {
  m.impl("tree_mask", &tree_mask_on_device<launch_tree_mask_cuda>);
  m.impl("tree_mask_packed", &tree_mask_packed_on_device<launch_tree_mask_packed_cuda>);
}
#endif

#ifdef TETRIS_EMULATION
TORCH_LIBRARY_IMPL(tetris_emu, CPU, m) {
  m.impl("tree_mask", &tree_mask_on_device<launch_tree_mask_emulated>);
  m.impl("tree_mask_packed", &tree_mask_packed_on_device<launch_tree_mask_packed_emulated>);
}
#endif

}  // namespace tetris
