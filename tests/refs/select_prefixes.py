"""References of ``tetris::select_prefixes`` and random inputs for it.

- ``select_prefixes_ref``: the op's definition (docs/ops.md) in plain Python, literally: path
  probabilities in double rounded to float32, the best ``budget`` positions by
  (score desc, request asc, position asc).
- ``adaptive_verification_counts``: the semantics of the budget step of vLLM's adaptive
  verification, restated from its documented behaviour (cumprod of the confidences, positions
  at or past the capacity at -inf, one global top-k, counts per request), for comparison on
  the inputs where both are defined (probabilities in [0, 1], valid rows, caps <= S).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import strategies as st

from .layouts import LAYOUTS, with_layout


def path_scores(probs: torch.Tensor, rows: torch.Tensor, lengths: torch.Tensor) -> list[list[float]]:
    """scores[b] = the float32 path probability of each eligible position of request b."""
    R, S = probs.shape
    table = probs.tolist()
    scores = []
    for r, cap in zip(rows.tolist(), lengths.tolist()):
        row = []
        if 0 <= r < R:
            path = 1.0
            for n in range(min(max(cap, 0), S)):
                p = table[r][n]
                path *= 1.0 if p > 1.0 else (0.0 if p < 0.0 else p)  # NaN stays NaN
                score = float(np.float32(path))
                if math.isnan(score):
                    break
                row.append(score)
        scores.append(row)
    return scores


def select_prefixes_ref(probs, rows, lengths, budget) -> torch.Tensor:
    """The lengths select_prefixes writes (same dtype as ``lengths``)."""
    scores = path_scores(probs, rows, lengths)
    order = sorted((-s, b, n) for b, row in enumerate(scores) for n, s in enumerate(row))
    counts = [0] * len(scores)
    for _, b, _ in order[:budget]:
        counts[b] += 1
    return torch.tensor(counts, dtype=lengths.dtype)


def adaptive_verification_counts(confidences, idx_mapping, capacities, budget, num_steps):
    """vLLM's documented budget step: the admitted count per request (ties as topk leaves them)."""
    survival = confidences[idx_mapping.long()].cumprod(dim=1)
    beyond = torch.arange(num_steps)[None, :] >= capacities[:, None]
    survival = survival.masked_fill(beyond, float("-inf")).flatten()
    admitted = torch.zeros_like(survival, dtype=torch.bool)
    admitted[survival.topk(budget).indices] = True
    return admitted.view(-1, num_steps).sum(1, dtype=capacities.dtype)


def admitted_scores(probs, rows, caps, counts) -> list[float]:
    """The path probabilities of the admitted positions (the first counts[b] of request b), sorted."""
    scores = path_scores(probs, rows, caps)
    return sorted(s for row, c in zip(scores, counts.tolist()) for s in row[:c])


# Random inputs.

STYLES = ("continuous", "ties", "specials")


def random_probs(g: torch.Generator, R: int, S: int, style: str) -> torch.Tensor:
    """continuous: uniform in (0, 1), ties practically never; ties: a few exact values;
    specials: also NaN, negative, > 1, 0, -0.0 and 1."""
    if style == "continuous":
        return torch.rand(R, S, generator=g)
    values = torch.tensor([1.0, 0.5, 0.25, 0.75, 0.125])
    if style == "specials":
        values = torch.cat([values, torch.tensor([float("nan"), -0.5, 1.5, 0.0, -0.0, float("inf")])])
    return values[torch.randint(len(values), (R, S), generator=g)]


@st.composite
def select_prefixes_inputs(draw, max_rows=12, max_batch=12, max_steps=9):
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    R = draw(st.integers(0, max_rows))
    S = draw(st.integers(0, max_steps))
    B = draw(st.integers(0, max_batch))
    style = draw(st.sampled_from(STYLES))
    probs = with_layout(random_probs(g, R, S, style), draw(st.sampled_from(LAYOUTS)))
    # Mostly valid rows, sometimes out of range (negative or >= R).
    rows = (
        torch.randint(-2, R + 2, (B,), generator=g)
        if draw(st.booleans())
        else (torch.randint(0, max(R, 1), (B,), generator=g) if R else torch.zeros(B, dtype=torch.long))
    )
    rows = rows.to(draw(st.sampled_from([torch.int32, torch.int64])))
    lengths = torch.randint(-1, S + 3, (B,), generator=g).to(
        draw(st.sampled_from([torch.int32, torch.int64]))
    )
    if draw(st.booleans()):
        lengths = with_layout(lengths, "strided")
    budget = draw(st.integers(0, B * S + 2))
    return dict(probs=probs, rows=rows, lengths=lengths, budget=budget)
