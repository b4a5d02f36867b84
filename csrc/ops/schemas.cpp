// The schemas of every tetris op, in one place (docs/ops.md has the semantics).
// CPU implementations register in csrc/ops/<op>/cpu.cpp, CUDA and emulated ones in
// csrc/ops/device_registrations.cpp.
#include <torch/library.h>

namespace {

// Defined once and registered in both namespaces, so that `tetris_emu` (the CUDA kernel
// source run on the CPU by the emulation harness) has exactly the schemas of `tetris`.
void define_tetris_ops(torch::Library& m) {
  m.def(
      "draft_cumprod(Tensor logits, Tensor tokens, Tensor? parents=None, "
      "float temperature=1.0) -> (Tensor token_logprobs, Tensor cum_logprobs)");
  m.def(
      "select(Tensor scores, int budget, Tensor? parents=None, "
      "Tensor? max_per_request=None, float? min_score=None) -> (Tensor selected, Tensor counts)");
  m.def("select_prefixes(Tensor probs, Tensor rows, Tensor(a!) lengths, int budget) -> ()");
  m.def(
      "tree_mask(Tensor selected, Tensor? parents, Tensor prefix_lens) -> "
      "(Tensor slot_index, Tensor slot_parent, Tensor positions, Tensor mask)");
  m.def(
      "tree_mask_packed(Tensor selected, Tensor? parents, Tensor prefix_lens) -> "
      "(Tensor cu_seqlens, Tensor packed_mask)");
  m.def(
      "verify_greedy(Tensor slot_tokens, Tensor slot_parent, Tensor target_tokens) -> "
      "(Tensor accepted_slots, Tensor num_accepted, Tensor out_tokens)");
  m.def(
      "verify_sampling(Tensor slot_tokens, Tensor slot_parent, Tensor target_probs, "
      "Tensor? draft_probs, Tensor uniforms) -> "
      "(Tensor accepted_slots, Tensor num_accepted, Tensor out_tokens)");
}

}  // namespace

TORCH_LIBRARY(tetris, m) { define_tetris_ops(m); }

#ifdef TETRIS_EMULATION
TORCH_LIBRARY(tetris_emu, m) { define_tetris_ops(m); }
#endif
