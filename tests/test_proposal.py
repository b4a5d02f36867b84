"""Proposal's derived structure: the depth of each candidate (chains and trees), and the
candidates a request can still use."""

from dataclasses import replace

import pytest
import torch

from tetris_ext.proposal import Proposal


def _proposal(parents):
    tokens = torch.zeros(len(parents), len(parents[0]), dtype=torch.long)
    logprobs = torch.zeros(tokens.shape)
    return Proposal(tokens, torch.tensor(parents), logprobs, logprobs)


def test_depths_of_chains_count_from_one():
    chains = _proposal([[-1, 0, 1]] * 2)  # explicit chain parents ...
    implicit = Proposal(torch.zeros(2, 3, dtype=torch.long), None, torch.zeros(2, 3), torch.zeros(2, 3))
    assert chains.depths().tolist() == [[1, 2, 3], [1, 2, 3]]
    assert implicit.depths().tolist() == chains.depths().tolist()  # ... and parents=None agree


def test_depths_of_trees_follow_the_parents():
    # Row 0: two children of the root, a grandchild under the second, a great-grandchild.
    # Row 1: a chain of two, then a second child of the root.
    tree = _proposal([[-1, -1, 1, 2], [-1, 0, -1, 2]])
    assert tree.depths().tolist() == [[1, 1, 2, 3], [1, 2, 1, 2]]


# ------------------------------------------------------------------------------------------
# usable(): what a request can still take


def _with_left(proposal, left):
    return replace(proposal, tokens_left=torch.tensor(left, dtype=torch.long))


def test_usable_drops_candidates_at_depth_at_least_the_tokens_left():
    tokens = torch.tensor([[5, 6, 7, 8], [9, 10, 11, -1]])
    logp = torch.log(torch.tensor([[0.9, 0.8, 0.7, 0.6], [0.5, 0.5, 0.5, 1.0]]))
    logp[1, 3] = -float("inf")
    chains = Proposal(tokens, None, logp, logp.cumsum(1))
    usable = _with_left(chains, [3, 1]).usable()
    # 3 left: 2 accepted drafts + the bonus; 1 left: the bonus only.
    assert usable.tokens.tolist() == [[5, 6, -1, -1], [-1, -1, -1, -1]]
    assert torch.isneginf(usable.cum_logprobs[0, 2:]).all() and torch.isneginf(usable.cum_logprobs[1]).all()
    assert torch.isneginf(usable.token_logprobs[0, 2:]).all()
    assert torch.equal(usable.cum_logprobs[0, :2], chains.cum_logprobs[0, :2])  # the rest as it was
    # Enough left for every candidate, or progress unknown: nothing changes.
    for same in (_with_left(chains, [5, 5]).usable(), chains.usable()):
        assert torch.equal(same.tokens, chains.tokens) and torch.equal(same.cum_logprobs, chains.cum_logprobs)


def test_usable_trees_stay_ancestor_closed():
    tree = _proposal([[-1, -1, 1, 2], [-1, 0, -1, 2]])  # depths [[1, 1, 2, 3], [1, 2, 1, 2]]
    tree.tokens += 4
    usable = _with_left(tree, [3, 2]).usable()
    assert usable.tokens.tolist() == [[4, 4, 4, -1], [4, -1, 4, -1]]
    kept = usable.tokens >= 0
    parent_kept = kept.gather(1, usable.parents.clamp(min=0)) | (usable.parents < 0)
    assert (parent_kept | ~kept).all()  # a kept child's parent is kept (or is the root)


def test_output_lens_are_checked_as_tokens_left_are():
    """output_lens: a CPU int64 count per request, >= 0 (a request that joined has none yet)."""
    proposal = _proposal([[-1, 0]] * 2)
    assert replace(proposal, output_lens=torch.tensor([0, 5])).output_lens.tolist() == [0, 5]
    bad = [
        torch.tensor([0, -1]),  # negative
        torch.tensor([0, 1], dtype=torch.int32),
        torch.tensor([0, 1, 2]),  # one per request, not three
        [0, 1],  # not a tensor
    ]
    for lens in bad:
        with pytest.raises(ValueError, match="output_lens"):
            replace(proposal, output_lens=lens)
