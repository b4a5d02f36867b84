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

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from . import ops
from .proposal import Outcome, Proposal

__all__ = ["Block", "Verified", "build_block", "verify", "verify_greedy_along_path", "verify_greedy_tokens"]


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


def verify_greedy_along_path(
    block: Block, target_token_at: Callable[[Tensor], Tensor], lookahead: Sequence[int] = (1,)
) -> Verified:
    """Greedy acceptance asking for the target's tokens in rounds, never at a slot below a
    rejection that the rounds have already seen. ``target_token_at(index)``: the target's
    greedy tokens after the real slots ``index`` (int64, positions in the row-major order of
    ``block.real``, as ``verify``'s logits rows). Round k asks, for every row whose walk down
    its accepted path reached a slot without a token, for that slot and its descendants down
    to ``lookahead[k]`` levels below it; rounds past the end of ``lookahead`` ask for the
    whole subtree. So ``()`` asks for every real slot in one round (what ``verify`` gets),
    ``(0,) * width`` only for the path, one depth per round; the default ``(1,)`` asks for the
    roots and their children, then, in one more round, for what lies below the children the
    target accepted. The decision is ``verify``'s on the logits of every real slot: the walk
    takes the first matching child in slot order, as ``verify_greedy`` does, which then reads
    only tokens asked for. Where the output head is most of a verified token's cost (a small
    model with a large vocabulary on a CPU) the rows rejected at depth 1 skip the head of
    their deeper candidates, for one more head call per step."""
    B, q = block.tokens.shape
    row_of_slot = torch.full((B, q), -1, dtype=torch.long)
    row_of_slot[block.real] = torch.arange(int(block.real.sum()))
    candidate = block.slot_index >= 0
    parent = block.slot_parent.clamp(min=0)  # (read only at candidates)
    known = torch.full((B, q), -1, dtype=torch.long)  # the target's tokens asked for so far
    rows = torch.arange(B)
    node = torch.zeros(B, dtype=torch.long)  # each row's walk: its root, then accepted slots
    walking = torch.ones(B, dtype=torch.bool)
    rounds = 0
    while bool(walking.any()):
        unknown = walking & (known[rows, node] < 0)
        if bool(unknown.any()):
            ask = torch.zeros(B, q, dtype=torch.bool)
            ask[rows[unknown], node[unknown]] = True
            level = ask
            for _ in range(lookahead[rounds] if rounds < len(lookahead) else q):
                level = candidate & level.gather(1, parent)
                if not bool(level.any()):
                    break
                ask = ask | level
            known[ask] = target_token_at(row_of_slot[ask])
            rounds += 1
        wanted = known[rows, node]
        match = candidate & (block.slot_parent == node.unsqueeze(1)) & (block.tokens == wanted.unsqueeze(1))
        walking = walking & match.any(1)
        node = torch.where(walking, match.int().argmax(1), node)  # argmax: the first match
    return verify_greedy_tokens(block, known)


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
