"""The verification block: from a policy's selection to the target's accepted tokens.

``build_block`` lays the selected candidates out as slots (``tetris_ext.ops.tree_mask``):
slot 0 is each request's root (its last accepted token), then the selected candidates in
topological order, with positions and the tree attention mask the target forward needs.
``verify`` turns the target's logits at those slots into accepted tokens
(``verify_greedy`` at temperature 0, lossless ``verify_sampling`` otherwise);
``verify_greedy_tokens`` does the greedy case from the target's tokens themselves (a replay
reads them from a recorded continuation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import ops
from .proposal import Outcome, Proposal

__all__ = ["Block", "Verified", "build_block", "verify", "verify_greedy_tokens"]


@dataclass
class Block:
    """The target's query block of one step, trimmed to the widest request.

    tokens [B, q] (-1 on padding slots), slot_index [B, q] (candidate of each slot, -1 for the
    root and padding), slot_parent [B, q], positions [B, q], mask [B, q, q] bool, real [B, q]
    bool (root or candidate).
    """

    tokens: Tensor
    slot_index: Tensor
    slot_parent: Tensor
    positions: Tensor
    mask: Tensor
    real: Tensor

    @property
    def width(self) -> int:
        return self.tokens.shape[1]


@dataclass
class Verified:
    """accepted_slots [B, q] (path order, -1 padded), num_accepted [B], out_tokens [B, q]
    (accepted drafts then the bonus token, -1 padded)."""

    accepted_slots: Tensor
    num_accepted: Tensor
    out_tokens: Tensor

    def outcome(self, block: Block, selected: Tensor) -> Outcome:
        """The same decision in candidate indices, for policies and drafters."""
        path = torch.where(
            self.accepted_slots >= 0, block.slot_index.gather(1, self.accepted_slots.clamp(min=0)), -1
        )
        accepted = torch.zeros_like(selected)
        rows = torch.arange(path.shape[0]).unsqueeze(1).expand_as(path)
        accepted[rows[path >= 0], path[path >= 0]] = True
        return Outcome(selected=selected, accepted=accepted, accepted_path=path)


def build_block(proposal: Proposal, selected: Tensor, roots: Tensor, prefix_lens: Tensor) -> Block:
    """Slots, positions and tree mask for the selected candidates (roots [B]: last accepted
    tokens; prefix_lens [B]: tokens in the target's cache = the roots' positions)."""
    slot_index, slot_parent, positions, mask = ops.tree_mask(selected, proposal.parents, prefix_lens)
    real = slot_index >= 0
    real[:, 0] = True
    width = int(real.sum(1).max()) if real.shape[0] else 1
    slot_index, slot_parent, positions = slot_index[:, :width], slot_parent[:, :width], positions[:, :width]
    mask, real = mask[:, :width, :width], real[:, :width]
    tokens = torch.where(
        slot_index >= 0,
        proposal.tokens.gather(1, slot_index.clamp(min=0)) if proposal.num_candidates else -1,
        -1,
    )
    tokens[:, 0] = roots
    return Block(tokens, slot_index, slot_parent, positions, mask, real)


def verify(
    block: Block, logits: Tensor, proposal: Proposal, temperature: float, generator: torch.Generator | None
) -> Verified:
    """Accept tokens given the target's logits [n, V] at the block's real slots (row-major)."""
    B, q = block.tokens.shape
    if temperature <= 0:
        target_tokens = torch.full((B, q), -1, dtype=torch.long)
        target_tokens[block.real] = logits.argmax(-1)
        return verify_greedy_tokens(block, target_tokens)
    target_probs = logits.new_zeros(B, q, logits.shape[-1])
    target_probs[block.real] = torch.softmax(logits / temperature, dim=-1)
    draft_probs = _draft_probs_per_slot(block, proposal)
    uniforms = torch.rand(B, q, generator=generator)
    return Verified(
        *ops.verify_sampling(block.tokens, block.slot_parent, target_probs, draft_probs, uniforms)
    )


def verify_greedy_tokens(block: Block, target_tokens: Tensor) -> Verified:
    """Greedy acceptance given the target's own token after each slot (target_tokens [B, q]
    int64, -1 on padding slots)."""
    return Verified(*ops.verify_greedy(block.tokens, block.slot_parent, target_tokens))


def _draft_probs_per_slot(block: Block, proposal: Proposal) -> Tensor | None:
    """verify_sampling wants, per slot, the draft distribution its children were sampled from;
    the proposal has, per candidate, the distribution the candidate was sampled from."""
    if proposal.draft_probs is None:
        return None
    B, q = block.tokens.shape
    V = proposal.draft_probs.shape[-1]
    per_slot = proposal.draft_probs.new_zeros(B, q, V)
    child = block.slot_index >= 0
    rows = torch.arange(B).unsqueeze(1).expand(B, q)
    per_slot[rows[child], block.slot_parent[child]] = proposal.draft_probs[
        rows[child], block.slot_index[child]
    ]
    return per_slot
