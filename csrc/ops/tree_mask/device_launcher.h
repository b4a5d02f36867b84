// tree_mask and tree_mask_packed on a device: the same argument checks as the CPU ops, outputs
// from the caching allocator, one launch of the kernels in csrc/ops/tree_mask/kernel.cuh on the
// current stream. Instantiated for CUDA and the emulator in csrc/ops/device_registrations.cpp.
#pragma once

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DeviceGuard.h>

#include <optional>
#include <tuple>

#include "common/device_launch.h"
#include "host_device/tree_slots.h"
#include "ops/tree_mask/checks.h"
#include "ops/tree_mask/params.h"

namespace tetris {

// What both ops hand the kernel: the inputs, and the slot layout [B, M] that the kernel always
// writes (tree_mask returns it; tree_mask_packed builds the mask rows from it).
struct SlotLayout {
  TreeMaskParams params;
  at::Tensor slot_index, slot_parent;
};

inline SlotLayout slot_layout(const at::Tensor& selected, const std::optional<at::Tensor>& parents,
                              const at::Tensor& prefix_lens) {
  const int64_t B = selected.size(0);
  const int64_t M = selected.size(1) + 1;
  const auto long_opts = selected.options().dtype(at::kLong);
  SlotLayout layout{{}, at::empty({B, M}, long_opts), at::empty({B, M}, long_opts)};
  TreeMaskParams& params = layout.params;
  params.batch = B;
  params.candidates = M - 1;
  params.selected = selected.data_ptr<bool>();
  copy_strides(selected, params.selected_stride);
  params.parents = index_matrix(parents);
  params.prefix_lens = index_matrix(prefix_lens);
  params.slot_index = layout.slot_index.data_ptr<int64_t>();
  params.slot_parent = layout.slot_parent.data_ptr<int64_t>();
  return layout;
}

template <KernelLauncher<TreeMaskParams> launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tree_mask_on_device(
    const at::Tensor& selected, const std::optional<at::Tensor>& parents,
    const at::Tensor& prefix_lens) {
  check_tree_mask_args("tree_mask", selected, parents, prefix_lens);
  const c10::DeviceGuard guard(selected.device());
  auto [params, slot_index, slot_parent] = slot_layout(selected, parents, prefix_lens);
  const int64_t M = params.candidates + 1;
  at::Tensor positions = at::empty({params.batch, M}, slot_index.options());
  at::Tensor mask = at::empty({params.batch, M, M}, selected.options().dtype(at::kBool));
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
  // The slot layout is scratch here: tree_mask_packed does not return it.
  SlotLayout layout = slot_layout(selected, parents, prefix_lens);
  TreeMaskParams& params = layout.params;
  at::Tensor cu_seqlens = at::empty({B + 1}, selected.options().dtype(at::kInt));
  at::Tensor packed_mask =
      at::empty({B, M, packed_row_bytes(M)}, selected.options().dtype(at::kByte));
  params.cu_seqlens = cu_seqlens.data_ptr<int32_t>();
  params.packed_mask = packed_mask.data_ptr<uint8_t>();
  launch_kernels(launch, params, selected);
  return {cu_seqlens, packed_mask};
}

}  // namespace tetris
