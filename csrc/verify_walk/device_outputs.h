// The outputs of the verify ops on a device, for their torch-facing launchers: allocated from
// the caching allocator and named in the kernel params (the kernel writes every element).
#pragma once

#include <ATen/ops/empty.h>

#include <tuple>

#include "common/device_launch.h"
#include "verify_walk/walk_params.h"

namespace tetris {

// (accepted_slots [B, M] int64, num_accepted [B] int32, out_tokens [B, M] int64) for the
// verification blocks of slot_tokens / slot_parent [B, M], and `params` pointed at them.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_walk_outputs(
    const at::Tensor& slot_tokens, const at::Tensor& slot_parent, VerifyWalkParams& params) {
  const int64_t B = slot_tokens.size(0);
  const int64_t M = slot_tokens.size(1);
  const auto long_opts = slot_tokens.options().dtype(at::kLong);
  at::Tensor accepted_slots = at::empty({B, M}, long_opts);
  at::Tensor num_accepted = at::empty({B}, slot_tokens.options().dtype(at::kInt));
  at::Tensor out_tokens = at::empty({B, M}, long_opts);
  params.batch = B;
  params.slots = M;
  params.slot_tokens = index_matrix(slot_tokens);
  params.slot_parent = index_matrix(slot_parent);
  params.accepted_slots = accepted_slots.data_ptr<int64_t>();
  params.num_accepted = num_accepted.data_ptr<int32_t>();
  params.out_tokens = out_tokens.data_ptr<int64_t>();
  return {accepted_slots, num_accepted, out_tokens};
}

}  // namespace tetris
