"""Reference of ``tetris::select`` in plain Python (the TETRIS walk, literally), and random
inputs for it.

Used by tests/test_select.py (CPU op) and by the emulation tests of the kernels, which import
``select_ref`` and the ``select_inputs`` strategy.
"""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st

from .draft_cumprod import INDEX_DTYPES, parent_matrix, random_parents
from .layouts import LAYOUTS, with_layout

NEG_INF = float("-inf")


def effective_scores(scores: torch.Tensor, parents: torch.Tensor | None = None) -> list[list[float]]:
    """e[b][n] = min(scores[b, n], e[b][parent]); NaN counts as -inf; an invalid parent
    (outside [-1, n - 1]) gives -inf."""
    B, N = scores.shape
    values = scores.tolist()
    p = parent_matrix(parents, B, N).tolist()
    e = [[NEG_INF] * N for _ in range(B)]
    for b in range(B):
        for n in range(N):
            x = NEG_INF if math.isnan(values[b][n]) else values[b][n]
            parent = p[b][n]
            if not -1 <= parent < n:
                e[b][n] = NEG_INF
            elif parent == -1:
                e[b][n] = x
            else:
                e[b][n] = min(x, e[b][parent])
    return e


def float32(x: float) -> float:
    """x rounded to float32, as comparing a float32 tensor with a Python number does."""
    return torch.tensor(x, dtype=torch.float32).item()


def eligible_candidates(e: list[list[float]], min_score: float | None) -> list[tuple[int, int]]:
    threshold = NEG_INF if min_score is None else float32(min_score)
    return [
        (b, n)
        for b, row in enumerate(e)
        for n, value in enumerate(row)
        if value > NEG_INF and value >= threshold
    ]


def caps_list(max_per_request: torch.Tensor | None, B: int, N: int) -> list[int]:
    if max_per_request is None:
        return [N] * B
    return [max(int(c), 0) for c in max_per_request.tolist()]


def walk_order(scores, parents=None, min_score=None) -> list[tuple[int, int]]:
    """The eligible candidates in the TETRIS walk order: e descending, b ascending, n ascending."""
    e = effective_scores(scores, parents)
    return sorted(eligible_candidates(e, min_score), key=lambda c: (-e[c[0]][c[1]], c[0], c[1]))


def select_walk(scores, budget, parents=None, max_per_request=None, min_score=None):
    """The candidates taken by the walk, in the order they are taken."""
    B, N = scores.shape
    caps = caps_list(max_per_request, B, N)
    per_request = [0] * B
    taken = []
    for b, n in walk_order(scores, parents, min_score):
        if len(taken) < budget and per_request[b] < caps[b]:
            taken.append((b, n))
            per_request[b] += 1
    return taken


def select_ref(scores, budget, parents=None, max_per_request=None, min_score=None):
    """(selected [B, N] bool, counts [B] int32) as docs/ops.md defines them."""
    B, N = scores.shape
    selected = torch.zeros(B, N, dtype=torch.bool)
    for b, n in select_walk(scores, budget, parents, max_per_request, min_score):
        selected[b, n] = True
    return selected, selected.sum(1, dtype=torch.int32)


# Random inputs.

# Few distinct values, so that ties (also between -0.0 and 0.0, and along paths) are common.
TIE_VALUES = [0.0, -0.0, -0.25, -0.5, -1.0, -1.5, -3.0]
SPECIAL_VALUES = [NEG_INF, float("nan"), float("inf")]
MIN_SCORES = [None, None, NEG_INF, -1.0, -0.5, 0.0, -0.7000000001, -1e300, 1e300, float("inf")]


def random_scores(gen: torch.Generator, B: int, N: int, style: str, special_rate: float):
    """style: "ties" (values from TIE_VALUES), "paths" (cumulative sums of log-probabilities,
    what draft_cumprod gives) or "any" (unordered floats)."""
    if style == "ties":
        scores = torch.tensor(TIE_VALUES)[torch.randint(0, len(TIE_VALUES), (B, N), generator=gen)]
    elif style == "paths":
        scores = (-torch.rand(B, N, generator=gen) * 2).cumsum(1) if N else torch.zeros(B, 0)
    else:
        scores = torch.randn(B, N, generator=gen) * 3
    special = torch.rand(B, N, generator=gen) < special_rate
    pick = torch.randint(0, len(SPECIAL_VALUES), (B, N), generator=gen)
    return torch.where(special, torch.tensor(SPECIAL_VALUES)[pick], scores)


@st.composite
def select_inputs(draw, max_batch: int = 5, max_candidates: int = 7, specials: bool = True):
    """Keyword arguments of select: chains and trees (with invalid parents), ties, -inf / NaN /
    +inf scores, caps (negative, zero, binding, loose), min_score, budgets from 0 to above the
    number of candidates, int32 / int64 indices, any layouts."""
    B = draw(st.integers(0, max_batch))
    N = draw(st.integers(0, max_candidates))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    special_rate = draw(st.sampled_from([0.0, 0.1, 0.3])) if specials else 0.0
    scores = random_scores(gen, B, N, draw(st.sampled_from(["ties", "paths", "any"])), special_rate)
    parents = None
    if draw(st.booleans()):
        invalid_rate = draw(st.sampled_from([0.0, 0.0, 0.2])) if specials else 0.0
        parents = random_parents(gen, B, N, invalid_rate).to(draw(st.sampled_from(INDEX_DTYPES)))
        parents = with_layout(parents, draw(st.sampled_from(LAYOUTS)))
    max_per_request = None
    if draw(st.booleans()):
        max_per_request = torch.randint(-2, N + 2, (B,), generator=gen)
        max_per_request = with_layout(
            max_per_request.to(draw(st.sampled_from(INDEX_DTYPES))), draw(st.sampled_from(LAYOUTS))
        )
    return dict(
        scores=with_layout(scores, draw(st.sampled_from(LAYOUTS))),
        budget=draw(st.integers(0, B * N + 2)),
        parents=parents,
        max_per_request=max_per_request,
        min_score=draw(st.sampled_from(MIN_SCORES)) if specials else None,
    )


__all__ = [
    "effective_scores",
    "eligible_candidates",
    "walk_order",
    "select_walk",
    "select_ref",
    "select_inputs",
    "random_scores",
    "float32",
]
