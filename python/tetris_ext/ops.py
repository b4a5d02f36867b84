"""Typed wrappers and fake (meta) implementations of ``torch.ops.tetris.*``.

The semantics of every op are in docs/ops.md; the C++ schemas are in csrc/ops/schemas.cpp.
Fakes run the argument checks of the real ops (op_args.py, the twin of csrc/ops/<op>/checks.h) and
describe the output shapes and dtypes, so that the ops trace under torch.compile and
FakeTensorMode and reject there what the real ops reject; the wrappers check Python scalars
and layouts before dispatch, so that those messages name the argument too.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import op_args

__all__ = [
    "draft_cumprod",
    "select",
    "select_prefixes",
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
    op_args.check_layouts("draft_cumprod", logits=logits, tokens=tokens, parents=parents)
    temperature = op_args.check_temperature("draft_cumprod", temperature)
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
    op_args.check_layouts("select", scores=scores, parents=parents, max_per_request=max_per_request)
    budget = op_args.check_budget("select", budget)
    min_score = op_args.check_min_score("select", min_score)
    return torch.ops.tetris.select.default(scores, budget, parents, max_per_request, min_score)


def select_prefixes(probs: Tensor, rows: Tensor, lengths: Tensor, budget: int) -> None:
    """TETRIS over chains given per-position probabilities; writes the chosen lengths in place.

    probs [R, S] float32: probs[r, n] is the probability that position n of a chain drafted
    from row r is accepted given its predecessors were. Request b uses row ``rows[b]`` and at
    most ``lengths[b]`` positions ([B] int32/int64, read, then overwritten). Over the batch, the
    ``budget`` positions with the largest path probability (running product) are chosen, ties
    by (request, position); ``lengths[b]`` becomes request b's count, a prefix (docs/ops.md).
    """
    op_args.check_layouts("select_prefixes", probs=probs, rows=rows, lengths=lengths)
    budget = op_args.check_budget("select_prefixes", budget)
    torch.ops.tetris.select_prefixes.default(probs, rows, lengths, budget)


def tree_mask(
    selected: Tensor, parents: Tensor | None, prefix_lens: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Verification block layout: (slot_index, slot_parent, positions [B, N+1], mask [B, N+1, N+1])."""
    op_args.check_layouts("tree_mask", selected=selected, parents=parents, prefix_lens=prefix_lens)
    return torch.ops.tetris.tree_mask.default(selected, parents, prefix_lens)


def tree_mask_packed(selected: Tensor, parents: Tensor | None, prefix_lens: Tensor) -> tuple[Tensor, Tensor]:
    """Varlen layout: (cu_seqlens [B+1] int32, packed_mask [B, N+1, ceil((N+1)/8)] uint8)."""
    op_args.check_layouts("tree_mask_packed", selected=selected, parents=parents, prefix_lens=prefix_lens)
    return torch.ops.tetris.tree_mask_packed.default(selected, parents, prefix_lens)


def verify_greedy(
    slot_tokens: Tensor, slot_parent: Tensor, target_tokens: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Greedy verification: (accepted_slots [B, M] int64, num_accepted [B] int32, out_tokens [B, M] int64)."""
    op_args.check_layouts(
        "verify_greedy", slot_tokens=slot_tokens, slot_parent=slot_parent, target_tokens=target_tokens
    )
    return torch.ops.tetris.verify_greedy.default(slot_tokens, slot_parent, target_tokens)


def verify_sampling(
    slot_tokens: Tensor,
    slot_parent: Tensor,
    target_probs: Tensor,
    draft_probs: Tensor | None,
    uniforms: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Lossless rejection-sampling verification; randomness from ``uniforms`` [B, M] in [0, 1)."""
    op_args.check_layouts(
        "verify_sampling",
        slot_tokens=slot_tokens,
        slot_parent=slot_parent,
        target_probs=target_probs,
        draft_probs=draft_probs,
        uniforms=uniforms,
    )
    return torch.ops.tetris.verify_sampling.default(
        slot_tokens, slot_parent, target_probs, draft_probs, uniforms
    )


# Fake implementations: the real ops' argument checks, then output shapes and dtypes.


def _register_fakes(namespace: str) -> None:
    @torch.library.register_fake(f"{namespace}::draft_cumprod")
    def _(logits, tokens, parents=None, temperature=1.0):
        op_args.check_draft_cumprod(logits, tokens, parents, temperature)
        shape = logits.shape[:2]
        return logits.new_empty(shape, dtype=torch.float32), logits.new_empty(shape, dtype=torch.float32)

    @torch.library.register_fake(f"{namespace}::select")
    def _(scores, budget, parents=None, max_per_request=None, min_score=None):
        op_args.check_select(scores, budget, parents, max_per_request, min_score)
        return (
            scores.new_empty(scores.shape, dtype=torch.bool),
            scores.new_empty(scores.shape[:1], dtype=torch.int32),
        )

    @torch.library.register_fake(f"{namespace}::select_prefixes")
    def _(probs, rows, lengths, budget):
        op_args.check_select_prefixes(probs, rows, lengths, budget)

    @torch.library.register_fake(f"{namespace}::tree_mask")
    def _(selected, parents, prefix_lens):
        op_args.check_tree_mask("tree_mask", selected, parents, prefix_lens)
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
        op_args.check_tree_mask("tree_mask_packed", selected, parents, prefix_lens)
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
        op_args.check_verify_greedy(slot_tokens, slot_parent, target_tokens)
        return verify_outputs(slot_tokens)

    @torch.library.register_fake(f"{namespace}::verify_sampling")
    def _(slot_tokens, slot_parent, target_probs, draft_probs, uniforms):
        op_args.check_verify_sampling(slot_tokens, slot_parent, target_probs, draft_probs, uniforms)
        return verify_outputs(slot_tokens)


# Autograd: draft_cumprod is differentiable in `logits` (for training drafters on the TETRIS
# objective, or calibrating the proxy); select and the rest have integer outputs.


def _draft_cumprod_setup_context(ctx, inputs, output):
    logits, tokens, parents, temperature = inputs
    ctx.save_for_backward(logits, tokens, parents)
    ctx.temperature = temperature


def _draft_cumprod_backward(ctx, grad_token_logprobs, grad_cum_logprobs):
    """d token_logprobs[b,n] / d logits[b,n,:] = (onehot(token) - softmax(logits / T)) / T for a
    valid candidate, 0 for an invalid one; cum_logprobs[b,m] sends its gradient to every
    token_logprobs on the path root..m when that whole path is valid (else it is a constant -inf)."""
    logits, tokens, parents, temperature = *ctx.saved_tensors, ctx.temperature
    B, N, V = logits.shape
    n = torch.arange(N, device=logits.device)
    parent = (n - 1).expand(B, N) if parents is None else parents.long()
    tokens = tokens.long()
    valid = (tokens >= 0) & (tokens < V) & (parent >= -1) & (parent < n)
    # on_path[b, m]: every candidate from the root to m is valid (then cum_logprobs is a sum).
    on_path = valid.clone()
    rows = torch.arange(B, device=logits.device)
    for m in range(N):
        has_parent = parent[:, m] >= 0
        parent_on_path = on_path[rows, parent[:, m].clamp(0, max(N - 1, 0))]
        on_path[:, m] &= ~has_parent | parent_on_path
    # Gradient on each token_logprobs: its own, plus its subtree's cum_logprobs gradients
    # (children come after their parents, so one sweep from the leaves up accumulates them).
    subtree = torch.where(on_path, grad_cum_logprobs.float(), 0.0)
    for m in reversed(range(N)):
        send = on_path[:, m] & (parent[:, m] >= 0)
        subtree.scatter_add_(
            1,
            parent[:, m].clamp(0, N - 1).unsqueeze(1),
            torch.where(send, subtree[:, m], 0.0).unsqueeze(1),
        )
    grad_token = torch.where(valid, grad_token_logprobs.float(), 0.0) + subtree
    inverse_temperature = torch.tensor(1.0 / temperature, dtype=torch.float32)
    # Differences from the row maximum, scaled (as the op computes them: no overflow at small T).
    shifted = logits.float() - (logits.float().amax(dim=-1, keepdim=True) if V else 0.0)
    probs = torch.softmax(shifted * inverse_temperature, dim=-1)
    onehot = torch.nn.functional.one_hot(tokens.clamp(0, max(V - 1, 0)), V).to(probs.dtype)
    grad_logits = (grad_token * inverse_temperature).unsqueeze(-1) * (onehot - probs)
    grad_logits = torch.where(valid.unsqueeze(-1), grad_logits, 0.0)
    return grad_logits.to(logits.dtype), None, None, None


def _register_autograd(namespace: str) -> None:
    torch.library.register_autograd(
        f"{namespace}::draft_cumprod",
        _draft_cumprod_backward,
        setup_context=_draft_cumprod_setup_context,
    )


_register_fakes("tetris")
_register_autograd("tetris")
if torch._C._jit_get_schemas_for_operator("tetris_emu::select"):
    _register_fakes("tetris_emu")
    _register_autograd("tetris_emu")
