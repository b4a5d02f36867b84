// select_prefixes on CUDA (tetris::select_prefixes) and through the emulation harness
// (tetris_emu::select_prefixes): checks the arguments exactly as the CPU op does, allocates the
// workspace (used when the keys do not fit in shared memory; its size comes from the shapes), and
// launches csrc/ops/select_prefixes/kernel.cuh, which writes `lengths` in place.
// Instantiated for both in csrc/ops/device_registrations.cpp.
#pragma once

#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>

#include "common/device_launch.h"
#include "ops/select_prefixes/checks.h"
#include "ops/select_prefixes/params.h"

namespace tetris {

template <KernelLauncher<SelectPrefixesParams> launch>
void select_prefixes_on_device(const at::Tensor& probs, const at::Tensor& rows,
                               const at::Tensor& lengths, int64_t budget) {
  check_select_prefixes_args(probs, rows, lengths, budget);
  const c10::DeviceGuard guard(probs.device());
  const int64_t B = rows.size(0), S = probs.size(1);
  if (B == 0) return;
  if (S == 0) {
    lengths.zero_();  // no position to select
    return;
  }
  // One key per position; from the caching allocator (no host synchronisation, capture-safe).
  at::Tensor workspace = at::empty({B * S}, probs.options().dtype(at::kInt));

  SelectPrefixesParams p;
  p.probs = probs.data_ptr<float>();
  p.prob_rows = probs.size(0);
  p.positions = S;
  copy_strides(probs, p.probs_stride);
  p.rows = index_matrix(rows);
  p.batch = B;
  p.budget = budget;
  p.lengths = lengths.data_ptr();
  p.lengths_int64 = lengths.scalar_type() == at::kLong;
  p.lengths_stride = lengths.stride(0);
  p.workspace = reinterpret_cast<uint32_t*>(workspace.data_ptr<int32_t>());
  launch_kernels(launch, p, probs);
}

}  // namespace tetris
