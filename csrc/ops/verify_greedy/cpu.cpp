// CPU verify_greedy: accept, from the root, the first child whose token is the target's greedy
// choice after its parent, as long as one matches (docs/ops.md).
#include <torch/library.h>

#include "ops/verify_greedy/checks.h"
#include "verify_walk/cpu_walk.h"

namespace tetris {
namespace {

class GreedyWalker {
 public:
  GreedyWalker(at::TensorAccessor<int64_t, 2> tokens, at::TensorAccessor<int64_t, 2> targets)
      : tokens_(tokens), targets_(targets) {}
  void enter(int64_t, int64_t) {}
  bool try_child(int64_t b, int64_t slot, int64_t child) const {
    return tokens_[b][child] == targets_[b][slot];
  }
  int64_t bonus(int64_t b, int64_t slot) const { return targets_[b][slot]; }

 private:
  at::TensorAccessor<int64_t, 2> tokens_, targets_;
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_greedy_cpu(const at::Tensor& slot_tokens,
                                                                 const at::Tensor& slot_parent,
                                                                 const at::Tensor& target_tokens) {
  check_verify_greedy_args(slot_tokens, slot_parent, target_tokens);
  const at::Tensor tokens64 = slot_tokens.to(at::kLong);
  const at::Tensor targets64 = target_tokens.to(at::kLong);
  return walk_verification_blocks(slot_tokens, slot_parent, [&] {
    return GreedyWalker(tokens64.accessor<int64_t, 2>(), targets64.accessor<int64_t, 2>());
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(tetris, CPU, m) { m.impl("verify_greedy", &verify_greedy_cpu); }

}  // namespace tetris
