"""Pure-Python references of verify_greedy and verify_sampling, and input generators.

The generators are hypothesis strategies that draw a dict of op arguments
(``torch.ops.tetris.verify_greedy(**inputs)``); the emulation tests of the kernels reuse them.
verify_sampling_ref does its float32 arithmetic in the order docs/ops.md fixes
(sums sequential in token order), so the CPU op must equal it bit for bit on any input;
with ``dyadic=True`` inputs every sum is exact and any summation order gives the same bits.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st

from refs.tree_mask import INDEX_DTYPES

F32 = np.float32
FLT_MAX = np.finfo(np.float32).max
INVALID_INDEX_VALUES = [-1, -2, -(2**31), 2**31 - 1]  # fit int32 too


# ---------------------------------------------------------------------------------------------
# References


def _children(slot_parent_row, current):
    """Children of `current` in increasing slot order (a child comes after its parent)."""
    return [s for s in range(current + 1, len(slot_parent_row)) if int(slot_parent_row[s]) == current]


def _outputs(B, M):
    return (
        torch.full((B, M), -1, dtype=torch.int64),
        torch.zeros(B, dtype=torch.int32),
        torch.full((B, M), -1, dtype=torch.int64),
    )


def _write(outputs, b, path, slot_tokens, bonus):
    accepted_slots, num_accepted, out_tokens = outputs
    for k, s in enumerate(path):
        accepted_slots[b, k] = s
        out_tokens[b, k] = int(slot_tokens[b, s])
    out_tokens[b, len(path)] = bonus
    num_accepted[b] = len(path)


def verify_greedy_ref(slot_tokens, slot_parent, target_tokens):
    B, M = slot_tokens.shape
    outputs = _outputs(B, M)
    for b in range(B):
        path, current = [], 0
        while True:
            want = int(target_tokens[b, current])
            match = [s for s in _children(slot_parent[b], current) if int(slot_tokens[b, s]) == want]
            if not match:
                break
            current = match[0]
            path.append(current)
        _write(outputs, b, path, slot_tokens, int(target_tokens[b, current]))
    return outputs


def prob_weights(row) -> np.ndarray:
    """Probabilities as the ops read them: negative, NaN and infinite values count as 0."""
    row = np.asarray(row, dtype=F32)
    return np.where((row > 0) & (row <= FLT_MAX), row, F32(0)).astype(F32)


def sequential_sum(p: np.ndarray) -> np.float32:
    """float32 sum in token order (np.cumsum accumulates sequentially; np.sum does not)."""
    return np.cumsum(p, dtype=F32)[-1] if len(p) else F32(0)


def inverse_cdf(p: np.ndarray, u) -> int:
    """Smallest t with p[t] > 0 and cumsum(p)[t] > u * sum(p); else the last t with p[t] > 0."""
    threshold = F32(u) * sequential_sum(p)
    cumsum = np.cumsum(p, dtype=F32)
    hits = np.flatnonzero((p > 0) & (cumsum > threshold))
    if len(hits):
        return int(hits[0])
    positive = np.flatnonzero(p > 0)
    return int(positive[-1]) if len(positive) else -1


# Deliberate mistakes, for the negative controls of the statistical tests only.
MISTAKES = (
    "keep_rejected",  # without draft_probs: a rejected child's token keeps its mass
    "no_subtract",  # with draft_probs: the residual after a rejection is p itself
    "unnormalised",  # with draft_probs: test u * q(x) < p(x) and residual max(p - q, 0), ignoring sum(p)
)


def verify_sampling_ref(slot_tokens, slot_parent, target_probs, draft_probs, uniforms, mistake=None):
    assert mistake in (None,) + MISTAKES
    B, M = slot_tokens.shape
    V = target_probs.shape[2]
    target = target_probs.numpy()
    draft = None if draft_probs is None else draft_probs.numpy()
    u = uniforms.numpy()
    outputs = _outputs(B, M)
    for b in range(B):
        path, current = [], 0
        while True:
            p = prob_weights(target[b, current])
            accepted = None
            for s in _children(slot_parent[b], current):
                x = int(slot_tokens[b, s])
                if not 0 <= x < V:
                    continue  # an invalid token is skipped
                mass = sequential_sum(p)
                if draft is None:
                    if F32(u[b, s]) * mass < p[x]:
                        accepted = s
                        break
                    if mistake != "keep_rejected":
                        p[x] = 0
                else:
                    q = prob_weights(draft[b, current])
                    scale = F32(1) if mistake == "unnormalised" else mass
                    if F32(u[b, s]) * q[x] * scale < p[x]:
                        accepted = s
                        break
                    if mistake != "no_subtract":
                        p = prob_weights(p - scale * q)
            if accepted is None:
                break
            path.append(accepted)
            current = accepted
        if sequential_sum(p) == 0:
            p = prob_weights(target[b, current])  # nothing left: sample from the target itself
        _write(outputs, b, path, slot_tokens, inverse_cdf(p, u[b, 0]))
    return outputs


# ---------------------------------------------------------------------------------------------
# Generators


@st.composite
def slot_parent_rows(draw, M: int, invalid: bool = True):
    """slot_parent of one request: slot 0 the root (its value is ignored), slots 1..count a tree
    in topological order, the rest padding (-1), as tree_mask lays it out; with `invalid`,
    sometimes an out-of-range value (the slot itself, a later slot, below -1, huge)."""
    count = draw(st.integers(0, M - 1))
    row = [-1]
    for s in range(1, M):
        p = draw(st.integers(0, s - 1)) if s <= count else -1
        if invalid and draw(st.integers(0, 7)) == 0:
            p = draw(st.sampled_from([s, s + 1, M + 3] + INVALID_INDEX_VALUES))
        row.append(p)
    if invalid and M and draw(st.integers(0, 3)) == 0:
        row[0] = draw(st.integers(-3, M + 2))
    return row


@st.composite
def verify_greedy_inputs(
    draw, max_batch: int = 4, max_m: int = 12, invalid: bool = True, distinct_siblings: bool = False
):
    """{slot_tokens, slot_parent, target_tokens}: random slot trees over a small vocabulary, so
    that matches are frequent, and targets that name one of the slot's children's tokens at
    random places; with `invalid`, invalid parents and token values; random index dtypes.
    `distinct_siblings`: no two children of one slot share a token (as in a real draft tree)."""
    B = draw(st.integers(0, max_batch))
    M = draw(st.integers(1, max_m))
    tokens, parents, targets = [], [], []
    for _ in range(B):
        parent_row = draw(slot_parent_rows(M, invalid))
        token_row, rank = [], {}
        for s in range(M):
            t = draw(st.integers(0, 3))
            if distinct_siblings:  # disjoint token ranges per sibling rank
                rank[parent_row[s]] = rank.get(parent_row[s], -1) + 1
                t += 4 * rank[parent_row[s]]
            elif invalid and draw(st.integers(0, 9)) == 0:
                t = draw(st.sampled_from(INVALID_INDEX_VALUES))
            token_row.append(t)
        target_row = []
        for s in range(M):
            kids = _children(parent_row, s)
            if kids and draw(st.integers(0, 2)) > 0:
                target_row.append(token_row[draw(st.sampled_from(kids))])
            else:
                target_row.append(draw(st.integers(0, 7)))
        tokens.append(token_row)
        parents.append(parent_row)
        targets.append(target_row)
    dtypes = [draw(st.sampled_from(INDEX_DTYPES)) for _ in range(3)]
    return dict(
        slot_tokens=torch.tensor(tokens, dtype=dtypes[0]).reshape(B, M),
        slot_parent=torch.tensor(parents, dtype=dtypes[1]).reshape(B, M),
        target_tokens=torch.tensor(targets, dtype=dtypes[2]).reshape(B, M),
    )


def random_probs(shape, generator, dyadic: bool, normalised: bool) -> torch.Tensor:
    """float32 rows over the last dim with some zeros. dyadic: multiples of 1/64 (normalised:
    64 draws of a multinomial, so the row sums to exactly 1) or of 1/32 up to 1/4."""
    *rows, V = shape
    weights = torch.rand(*rows, V, generator=generator) * (torch.rand(*rows, V, generator=generator) > 0.3)
    weights[..., 0] += 1e-3  # at least one positive entry per row
    if not dyadic:
        return (weights / weights.sum(-1, keepdim=True)) if normalised else weights
    if normalised:
        flat = weights.reshape(-1, V)
        draws = torch.multinomial(flat, 64, replacement=True, generator=generator)
        counts = torch.zeros_like(flat).scatter_add_(1, draws, torch.ones_like(draws, dtype=flat.dtype))
        return (counts / 64).reshape(shape)
    return torch.floor(weights * 9) / 32


@st.composite
def verify_sampling_inputs(
    draw,
    dyadic: bool = True,
    draft: bool | None = None,
    max_batch: int = 3,
    max_m: int = 8,
    max_v: int = 8,
    invalid: bool = True,
):
    """{slot_tokens, slot_parent, target_probs, draft_probs, uniforms}: random slot trees,
    tokens mostly in [0, V) (with `invalid`, sometimes not, and parents out of range, and NaN,
    negative or infinite probabilities), target rows normalised or not, draft_probs present
    (draft=True), absent (False) or either (None), uniforms in [0, 1). With `dyadic` every
    probability and uniform is a short dyadic fraction: all sums and products are exact."""
    B = draw(st.integers(0, max_batch))
    M = draw(st.integers(1, max_m))
    V = draw(st.integers(1, max_v))
    with_draft = draw(st.booleans()) if draft is None else draft
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    parents = [draw(slot_parent_rows(M, invalid)) for _ in range(B)]
    tokens = torch.randint(0, V, (B, M), generator=g)
    if invalid:
        bad = torch.rand(B, M, generator=g) < 0.1
        tokens[bad] = torch.tensor(INVALID_INDEX_VALUES + [V])[
            torch.randint(0, 5, (int(bad.sum()),), generator=g)
        ]
    target = random_probs((B, M, V), g, dyadic, normalised=draw(st.booleans()))
    draft_probs = random_probs((B, M, V), g, dyadic, normalised=True) if with_draft else None
    if invalid:
        for probs in [target] + ([draft_probs] if with_draft else []):
            bad = torch.rand(B, M, V, generator=g) < 0.05
            probs[bad] = torch.tensor([float("nan"), -0.25, float("inf")])[
                torch.randint(0, 3, (int(bad.sum()),), generator=g)
            ]
    if dyadic:
        uniforms = torch.randint(0, 1024, (B, M), generator=g).float() / 1024
    else:
        uniforms = torch.rand(B, M, generator=g)
    return dict(
        slot_tokens=tokens.to(draw(st.sampled_from(INDEX_DTYPES))),
        slot_parent=torch.tensor(parents, dtype=draw(st.sampled_from(INDEX_DTYPES))).reshape(B, M),
        target_probs=target.float(),
        draft_probs=None if draft_probs is None else draft_probs.float(),
        uniforms=uniforms.float(),
    )
