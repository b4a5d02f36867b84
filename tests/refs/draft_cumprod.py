"""Reference of ``tetris::draft_cumprod`` in plain PyTorch, and random inputs for it.

Used by tests/test_draft_cumprod.py (CPU op) and by the emulation tests of the kernels, which
import ``draft_cumprod_ref`` and the ``draft_cumprod_inputs`` strategy.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from .layouts import LAYOUTS, with_layout

NEG_INF = float("-inf")


def parent_matrix(parents: torch.Tensor | None, B: int, N: int) -> torch.Tensor:
    """parents as int64 [B, N]; chains (None) hang candidate n below n - 1."""
    if parents is None:
        return (torch.arange(N, dtype=torch.int64) - 1).expand(B, N)
    return parents.to(torch.int64)


def valid_candidates(tokens: torch.Tensor, parents: torch.Tensor | None, V: int) -> torch.Tensor:
    """[B, N] bool: token in [0, V) and parent in [-1, n - 1]."""
    B, N = tokens.shape
    p = parent_matrix(parents, B, N)
    n = torch.arange(N)
    tokens = tokens.to(torch.int64)
    return (tokens >= 0) & (tokens < V) & (p >= -1) & (p < n)


def path_sums(token_logprobs: torch.Tensor, valid: torch.Tensor, parents: torch.Tensor | None):
    """cum[b, n] = token_logprobs[b, n] + cum[b, parent] in float32, in path order; -inf unless
    every candidate from the root to n is valid. (Out of place, so that autograd runs through.)"""
    B, N = token_logprobs.shape
    p = parent_matrix(parents, B, N)
    cum_columns: list[torch.Tensor] = []
    on_path_columns: list[torch.Tensor] = []
    for n in range(N):
        at_root = p[:, n] == -1
        parent = p[:, n].clamp(0, max(n - 1, 0))  # only read where the parent is valid
        if n == 0:
            parent_cum = torch.zeros(B)
            parent_on_path = torch.zeros(B, dtype=torch.bool)
        else:
            parent_cum = torch.stack(cum_columns, 1).gather(1, parent.unsqueeze(1)).squeeze(1)
            parent_on_path = torch.stack(on_path_columns, 1).gather(1, parent.unsqueeze(1)).squeeze(1)
        on_path = valid[:, n] & (at_root | parent_on_path)
        summed = torch.where(at_root, token_logprobs[:, n], token_logprobs[:, n] + parent_cum)
        cum_columns.append(torch.where(on_path, summed, NEG_INF))
        on_path_columns.append(on_path)
    if N == 0:
        return torch.empty(B, 0)
    return torch.stack(cum_columns, 1)


def scaled_log_softmax(logits, temperature):
    """log_softmax(logits / T) as the op defines it (docs/ops.md): differences from the row's
    maximum, scaled by float32(1 / T), so that the top logit is exactly 0 and nothing overflows
    at small T; a -inf logit stays -inf at every T (also when 1 / T rounds to 0)."""
    inverse_temperature = torch.tensor(1.0 / temperature, dtype=torch.float32)
    x = logits.float()
    shifted = x - x.amax(dim=-1, keepdim=True)
    scaled = torch.where(shifted == NEG_INF, NEG_INF, shifted * inverse_temperature)
    return torch.log_softmax(scaled, dim=-1)


def plain_log_softmax(logits, temperature):
    """The textbook float32 reference log_softmax(logits * float32(1 / T)), which the op
    matches within the tolerance of docs/ops.md where these products are finite."""
    inverse_temperature = torch.tensor(1.0 / temperature, dtype=torch.float32)
    return torch.log_softmax(logits.float() * inverse_temperature, dim=-1)


def draft_cumprod_ref(logits, tokens, parents=None, temperature=1.0):
    """(token_logprobs, cum_logprobs), both float32 [B, N] (docs/ops.md)."""
    B, N, V = logits.shape
    valid = valid_candidates(tokens, parents, V)
    token_logprobs = torch.full((B, N), NEG_INF)
    if V > 0:
        logprobs = scaled_log_softmax(logits, temperature)
        index = tokens.to(torch.int64).clamp(0, V - 1).unsqueeze(-1)
        token_logprobs = torch.where(valid, logprobs.gather(-1, index).squeeze(-1), NEG_INF)
    return token_logprobs, path_sums(token_logprobs, valid, parents)


# Random inputs.

LOGIT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)
# Vocabulary sizes around the CPU implementation's 512-logit chunks, besides small ones.
VOCAB_SIZES = st.one_of(st.integers(1, 40), st.sampled_from([0, 511, 512, 513, 1100]))


def random_parents(gen: torch.Generator, B: int, N: int, invalid_rate: float) -> torch.Tensor:
    """Tree parents: each candidate hangs below the root or an earlier one; some invalid."""
    parents = torch.empty(B, N, dtype=torch.int64)
    for n in range(N):
        parents[:, n] = torch.randint(-1, n, (B,), generator=gen)
    bad = torch.rand(B, N, generator=gen) < invalid_rate
    bad_values = torch.tensor([-2, -7, N, N + 3, 2**31 - 1, -(2**31)])
    pick = torch.randint(0, len(bad_values), (B, N), generator=gen)
    return torch.where(bad, bad_values[pick], parents)


def random_tokens(gen: torch.Generator, B: int, N: int, V: int, invalid_rate: float) -> torch.Tensor:
    tokens = torch.randint(0, max(V, 1), (B, N), generator=gen)
    bad = (torch.rand(B, N, generator=gen) < invalid_rate) | (V == 0)
    bad_values = torch.tensor([-1, -5, V, V + 7, 2**31 - 1, -(2**31)])
    pick = torch.randint(0, len(bad_values), (B, N), generator=gen)
    return torch.where(bad, bad_values[pick], tokens)


def random_logits(gen: torch.Generator, B: int, N: int, V: int, scale: float, specials: bool):
    """float32 logits; with `specials`, -inf (masked) entries and rare NaN / +inf / all -inf rows."""
    logits = torch.randn(B, N, V, generator=gen) * scale
    if specials and logits.numel():
        u = torch.rand(B, N, V, generator=gen)
        logits[u < 0.2] = NEG_INF
        row = torch.rand(B, N, generator=gen)
        logits[row < 0.05] = NEG_INF
        picks = torch.randint(0, V, (B, N), generator=gen)
        nan_rows = (row >= 0.05) & (row < 0.1)
        inf_rows = (row >= 0.1) & (row < 0.15)
        b_idx, n_idx = nan_rows.nonzero(as_tuple=True)
        logits[b_idx, n_idx, picks[b_idx, n_idx]] = float("nan")
        b_idx, n_idx = inf_rows.nonzero(as_tuple=True)
        logits[b_idx, n_idx, picks[b_idx, n_idx]] = float("inf")
    return logits


@st.composite
def draft_cumprod_inputs(draw, max_batch: int = 4, max_candidates: int = 6, dtypes=LOGIT_DTYPES):
    """Keyword arguments of draft_cumprod: chains and trees, invalid ids, -inf / NaN / +inf
    logits, all dtypes, int32 / int64 indices, any layouts, several temperatures."""
    B = draw(st.integers(0, max_batch))
    N = draw(st.integers(0, max_candidates))
    V = draw(VOCAB_SIZES)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    invalid_rate = draw(st.sampled_from([0.0, 0.0, 0.15, 0.5]))
    logits = random_logits(gen, B, N, V, draw(st.sampled_from([1.0, 4.0, 40.0])), draw(st.booleans()))
    logits = logits.to(draw(st.sampled_from(dtypes)))
    tokens = random_tokens(gen, B, N, V, invalid_rate).to(draw(st.sampled_from(INDEX_DTYPES)))
    parents = None
    if draw(st.booleans()):
        parents = random_parents(gen, B, N, invalid_rate).to(draw(st.sampled_from(INDEX_DTYPES)))
        parents = with_layout(parents, draw(st.sampled_from(LAYOUTS)))
    return dict(
        logits=with_layout(logits, draw(st.sampled_from(LAYOUTS))),
        tokens=with_layout(tokens, draw(st.sampled_from(LAYOUTS))),
        parents=parents,
        temperature=draw(st.sampled_from([1.0, 0.5, 0.7, 1.3, 4.0])),
    )


def assert_close_logprobs(actual: torch.Tensor, expected: torch.Tensor, *, atol=2e-5, rtol=2e-5):
    """Equal -inf / NaN patterns, finite values within tolerance."""
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, equal_nan=True)


__all__ = [
    "draft_cumprod_ref",
    "draft_cumprod_inputs",
    "path_sums",
    "valid_candidates",
    "parent_matrix",
    "random_parents",
    "random_tokens",
    "random_logits",
    "assert_close_logprobs",
]
