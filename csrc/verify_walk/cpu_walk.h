// The walk shared by the CPU verify ops: from the root of each request's verification block,
// offer the children of the current slot (in increasing slot order) to the op's acceptance
// rule; descend into the first accepted one; when none is accepted, the op names the bonus
// token that follows the last accepted slot.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <tuple>

#include "common/index_tensors.h"
#include "host_device/tree_slots.h"

namespace tetris {

// make_walker() builds, once per parallel chunk of requests, an object with
//   void enter(int64_t b, int64_t slot)          the walk arrives at `slot` (the root first);
//   bool try_child(int64_t b, int64_t slot, int64_t child)   accept `child` of `slot`?
//   int64_t bonus(int64_t b, int64_t slot)       the token after the last accepted `slot`.
// Returns (accepted_slots [B, M] int64, num_accepted [B] int32, out_tokens [B, M] int64).
template <class MakeWalker>
std::tuple<at::Tensor, at::Tensor, at::Tensor> walk_verification_blocks(
    const at::Tensor& slot_tokens, const at::Tensor& slot_parent, MakeWalker make_walker) {
  const int64_t B = slot_tokens.size(0);
  const int64_t M = slot_tokens.size(1);
  const auto long_opts = slot_tokens.options().dtype(at::kLong);
  at::Tensor accepted_slots = at::full({B, M}, -1, long_opts);
  at::Tensor num_accepted = at::zeros({B}, slot_tokens.options().dtype(at::kInt));
  at::Tensor out_tokens = at::full({B, M}, -1, long_opts);
  const IndexMatrix tokens = index_matrix(slot_tokens);
  const IndexMatrix parents = index_matrix(slot_parent);
  int64_t* accepted_out = accepted_slots.data_ptr<int64_t>();
  int32_t* count_out = num_accepted.data_ptr<int32_t>();
  int64_t* token_out = out_tokens.data_ptr<int64_t>();

  at::parallel_for(0, B, 16, [&](int64_t begin, int64_t end) {
    auto walker = make_walker();
    for (int64_t b = begin; b < end; ++b) {
      int64_t current = 0;
      int64_t count = 0;
      walker.enter(b, current);
      // Children of `current` are later slots; after descending into s, the children of s are
      // later than s, so one pass over the slots visits every candidate once.
      for (int64_t s = current + 1; s < M; ++s) {
        if (!is_child_slot(parents(b, s), s, current) || !walker.try_child(b, current, s)) continue;
        accepted_out[b * M + count] = s;
        token_out[b * M + count] = tokens(b, s);
        ++count;
        current = s;
        walker.enter(b, current);
      }
      token_out[b * M + count] = walker.bonus(b, current);  // count <= M - 1: always in range
      count_out[b] = static_cast<int32_t>(count);
    }
  });
  return {accepted_slots, num_accepted, out_tokens};
}

}  // namespace tetris
