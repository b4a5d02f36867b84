// CPU verify_greedy: accept, from the root, the first child whose token is the target's greedy
// choice after its parent, as long as one matches (docs/ops.md).
#include <torch/library.h>

#include "ops/verify_greedy/checks.h"
#include "verify_walk/cpu_walk.h"

namespace tetris {
namespace {

class GreedyWalker {
 public:
  GreedyWalker(IndexMatrix tokens, IndexMatrix targets) : tokens_(tokens), targets_(targets) {}
  void enter(int64_t, int64_t) {}
  bool try_child(int64_t b, int64_t slot, int64_t child) const {
    return tokens_(b, child) == targets_(b, slot);
  }
  int64_t bonus(int64_t b, int64_t slot) const { return targets_(b, slot); }

 private:
  IndexMatrix tokens_, targets_;
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_greedy_cpu(const at::Tensor& slot_tokens,
                                                                 const at::Tensor& slot_parent,
                                                                 const at::Tensor& target_tokens) {
  check_verify_greedy_args(slot_tokens, slot_parent, target_tokens);
  return walk_verification_blocks(slot_tokens, slot_parent, [&] {
    return GreedyWalker(index_matrix(slot_tokens), index_matrix(target_tokens));
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(tetris, CPU, m) { m.impl("verify_greedy", &verify_greedy_cpu); }

}  // namespace tetris
