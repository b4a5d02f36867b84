"""Typed wrappers and fake (meta) implementations of ``torch.ops.tetris.*``.

The semantics of every op are in docs/ops.md; the C++ schemas are in csrc/ops.cpp.
Fakes describe only output shapes and dtypes, so that the ops trace under torch.compile
and FakeTensorMode; the argument checks themselves live in C++ (csrc/args/).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "draft_cumprod",
    "select",
    "tree_mask",
    "tree_mask_packed",
    "verify_greedy",
    "verify_sampling",
]


def draft_cumprod(
    logits: Tensor, tokens: Tensor, parents: Tensor | None = None, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Log draft probability of each candidate's token, and its cumulative sum along the path.

    logits [B, N, V] (float32/16, bfloat16); tokens [B, N]; parents [B, N] or None for chains.
    Returns (token_logprobs, cum_logprobs), both [B, N] float32; -inf for invalid candidates.
    """
    return torch.ops.tetris.draft_cumprod.default(logits, tokens, parents, temperature)


def select(
    scores: Tensor,
    budget: int,
    parents: Tensor | None = None,
    max_per_request: Tensor | None = None,
    min_score: float | None = None,
) -> tuple[Tensor, Tensor]:
    """TETRIS: choose at most ``budget`` candidates over the batch with the largest path scores.

    scores [B, N] float32 (e.g. cum_logprobs). Returns (selected [B, N] bool, counts [B] int32).
    Ties are broken by request, then candidate index (docs/ops.md).
    """
    return torch.ops.tetris.select.default(scores, budget, parents, max_per_request, min_score)


def tree_mask(
    selected: Tensor, parents: Tensor | None, prefix_lens: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Verification block layout: (slot_index, slot_parent, positions [B, N+1], mask [B, N+1, N+1])."""
    return torch.ops.tetris.tree_mask.default(selected, parents, prefix_lens)


def tree_mask_packed(
    selected: Tensor, parents: Tensor | None, prefix_lens: Tensor
) -> tuple[Tensor, Tensor]:
    """Varlen layout: (cu_seqlens [B+1] int32, packed_mask [B, N+1, ceil((N+1)/8)] uint8)."""
    return torch.ops.tetris.tree_mask_packed.default(selected, parents, prefix_lens)


def verify_greedy(
    slot_tokens: Tensor, slot_parent: Tensor, target_tokens: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Greedy verification: (accepted_slots [B, M] int64, num_accepted [B] int32, out_tokens [B, M] int64)."""
    return torch.ops.tetris.verify_greedy.default(slot_tokens, slot_parent, target_tokens)


def verify_sampling(
    slot_tokens: Tensor,
    slot_parent: Tensor,
    target_probs: Tensor,
    draft_probs: Tensor | None,
    uniforms: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Lossless rejection-sampling verification; randomness from ``uniforms`` [B, M] in [0, 1)."""
    return torch.ops.tetris.verify_sampling.default(
        slot_tokens, slot_parent, target_probs, draft_probs, uniforms
    )


# Fake implementations: shapes and dtypes only.


def _register_fakes(namespace: str) -> None:
    @torch.library.register_fake(f"{namespace}::draft_cumprod")
    def _(logits, tokens, parents=None, temperature=1.0):
        shape = logits.shape[:2]
        return logits.new_empty(shape, dtype=torch.float32), logits.new_empty(shape, dtype=torch.float32)

    @torch.library.register_fake(f"{namespace}::select")
    def _(scores, budget, parents=None, max_per_request=None, min_score=None):
        return (
            scores.new_empty(scores.shape, dtype=torch.bool),
            scores.new_empty(scores.shape[:1], dtype=torch.int32),
        )

    @torch.library.register_fake(f"{namespace}::tree_mask")
    def _(selected, parents, prefix_lens):
        B, M = selected.shape[0], selected.shape[1] + 1
        long = dict(dtype=torch.int64)
        return (
            selected.new_empty((B, M), **long),
            selected.new_empty((B, M), **long),
            selected.new_empty((B, M), **long),
            selected.new_empty((B, M, M), dtype=torch.bool),
        )

    @torch.library.register_fake(f"{namespace}::tree_mask_packed")
    def _(selected, parents, prefix_lens):
        B, M = selected.shape[0], selected.shape[1] + 1
        return (
            selected.new_empty((B + 1,), dtype=torch.int32),
            selected.new_empty((B, M, (M + 7) // 8), dtype=torch.uint8),
        )

    def verify_outputs(slot_tokens):
        B, M = slot_tokens.shape
        return (
            slot_tokens.new_empty((B, M), dtype=torch.int64),
            slot_tokens.new_empty((B,), dtype=torch.int32),
            slot_tokens.new_empty((B, M), dtype=torch.int64),
        )

    @torch.library.register_fake(f"{namespace}::verify_greedy")
    def _(slot_tokens, slot_parent, target_tokens):
        return verify_outputs(slot_tokens)

    @torch.library.register_fake(f"{namespace}::verify_sampling")
    def _(slot_tokens, slot_parent, target_probs, draft_probs, uniforms):
        return verify_outputs(slot_tokens)


_register_fakes("tetris")
if torch._C._jit_get_schemas_for_operator("tetris_emu::select"):
    _register_fakes("tetris_emu")
