// Every op's kernels registered with torch, in one table per backend: the torch-facing launcher
// of csrc/ops/<op>/device_launcher.h instantiated with the op's CUDA kernels (torch.ops.tetris.*,
// CUDA tensors) or with the same kernel text compiled for the CPU emulator (torch.ops.tetris_emu.*,
// CPU tensors; tests only). The CPU implementations register in csrc/ops/<op>/cpu.cpp.
#include <torch/library.h>

#include "ops/draft_cumprod/device_launcher.h"
#include "ops/select/device_launcher.h"
#include "ops/select_prefixes/device_launcher.h"
#include "ops/tree_mask/device_launcher.h"
#include "ops/verify_greedy/device_launcher.h"
#include "ops/verify_sampling/device_launcher.h"

namespace tetris {

#ifdef TETRIS_WITH_CUDA
TORCH_LIBRARY_IMPL(tetris, CUDA, m) {
  m.impl("draft_cumprod", &draft_cumprod_on_device<launch_draft_cumprod_cuda>);
  m.impl("select", &select_on_device<launch_select_cuda>);
  m.impl("select_prefixes", &select_prefixes_on_device<launch_select_prefixes_cuda>);
  m.impl("tree_mask", &tree_mask_on_device<launch_tree_mask_cuda>);
  m.impl("tree_mask_packed", &tree_mask_packed_on_device<launch_tree_mask_packed_cuda>);
  m.impl("verify_greedy", &verify_greedy_on_device<launch_verify_greedy_cuda>);
  m.impl("verify_sampling", &verify_sampling_on_device<launch_verify_sampling_cuda>);
}
#endif

#ifdef TETRIS_EMULATION
TORCH_LIBRARY_IMPL(tetris_emu, CPU, m) {
  m.impl("draft_cumprod", &draft_cumprod_on_device<launch_draft_cumprod_emulated>);
  m.impl("select", &select_on_device<launch_select_emulated>);
  m.impl("select_prefixes", &select_prefixes_on_device<launch_select_prefixes_emulated>);
  m.impl("tree_mask", &tree_mask_on_device<launch_tree_mask_emulated>);
  m.impl("tree_mask_packed", &tree_mask_packed_on_device<launch_tree_mask_packed_emulated>);
  m.impl("verify_greedy", &verify_greedy_on_device<launch_verify_greedy_emulated>);
  m.impl("verify_sampling", &verify_sampling_on_device<launch_verify_sampling_emulated>);
}
#endif

}  // namespace tetris
