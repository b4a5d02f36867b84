"""Proposal's derived structure: the depth of each candidate (chains and trees)."""

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
