"""Hypothesis strategies and profiles of the adversarial suite (tests/adversarial/).

Profiles: `adversarial-ci` (the default) runs a small fixed set of examples, so that CI is quick
and a failure reproduces; `adversarial-long` (TETRIS_ADVERSARIAL=long) explores many new
examples each run, by hand (TETRIS_ADVERSARIAL_EXAMPLES: how many per test, default 1500):

    TETRIS_ADVERSARIAL=long PYTHONPATH=python .venv/bin/python -m pytest -q tests/adversarial
"""

from __future__ import annotations

import os

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from refs.blocks import greedy_block_inputs, sampling_block_inputs, tree_mask_block_inputs
from refs.layouts import LAYOUTS, with_layout

settings.register_profile(
    "adversarial-ci",
    max_examples=12,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "adversarial-long",
    deadline=None,
    max_examples=int(os.environ.get("TETRIS_ADVERSARIAL_EXAMPLES", 1500)),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = settings.get_profile(
    "adversarial-long" if os.environ.get("TETRIS_ADVERSARIAL") == "long" else "adversarial-ci"
)

INF, NAN = float("inf"), float("nan")
# Floats that break naive code: signed zeros, subnormals, the float32 extremes, infinities, NaN.
EXTREME_FLOATS = [0.0, -0.0, 1e-45, -1e-45, 1.2e-38, 3.4e38, -3.4e38, 1e30, -1e30, INF, -INF, NAN]
# Temperatures the op accepts, from the smallest (1 / T just below float32's overflow) up.
TEMPERATURES = [2.94e-39, 1e-38, 1e-30, 1e-8, 1e-6, 1e-3, 0.01, 0.7, 1.0, 3.0, 1e5, 1e30, 1e45, 1e300]


def float32_values(draw, shape, *, extremes: bool):
    """A float32 tensor of `shape`: scaled normal values, some replaced by extreme ones."""
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    scale = draw(st.sampled_from([1.0, 4.0, 1e-3, 1e4]))
    values = torch.randn(shape, generator=gen) * scale
    if extremes and values.numel():
        picks = draw(
            st.lists(
                st.tuples(st.integers(0, values.numel() - 1), st.sampled_from(EXTREME_FLOATS)), max_size=4
            )
        )
        flat = values.view(-1)
        for index, value in picks:
            flat[index] = value
    return values


def layout(draw, t):
    return with_layout(t, draw(st.sampled_from(LAYOUTS))) if t is not None else None


def index_matrix(draw, B, N, low, high):
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    dtype = draw(st.sampled_from([torch.int32, torch.int64]))
    return torch.randint(low, high + 1, (B, N), generator=gen).to(dtype)


@st.composite
def draft_cumprod_inputs(draw):
    B, N = draw(st.integers(0, 3)), draw(st.integers(0, 4))
    V = draw(st.one_of(st.integers(1, 40), st.sampled_from([511, 512, 513, 2049, 2050])))
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    logits = float32_values(draw, (B, N, V), extremes=draw(st.booleans())).to(dtype)
    if draw(st.booleans()) and B * N:  # greedy tokens: the most demanding at small T
        tokens = logits.float().nan_to_num(nan=-INF).argmax(-1)
    else:
        tokens = index_matrix(draw, B, N, -2, V + 1)
    parents = draw(st.sampled_from(["chain", "tree", "alias"]))
    parents = (
        None if parents == "chain" else tokens if parents == "alias" else index_matrix(draw, B, N, -3, N)
    )
    return dict(
        logits=layout(draw, logits),
        tokens=layout(draw, tokens),
        parents=layout(draw, parents),
        temperature=draw(st.sampled_from(TEMPERATURES)),
    )


@st.composite
def select_inputs(draw):
    B, N = draw(st.integers(0, 4)), draw(st.integers(0, 40))
    scores = float32_values(draw, (B, N), extremes=True)
    if draw(st.booleans()):  # many ties
        scores = scores.round()
    tree = draw(st.booleans())
    caps = index_matrix(draw, 1, B, -2, N + 2)[0] if draw(st.booleans()) else None
    return dict(
        scores=layout(draw, scores),
        budget=draw(st.sampled_from([0, 1, 2, B * N // 2, B * N, B * N + 3, 2**40, 2**63 - 1])),
        parents=layout(draw, index_matrix(draw, B, N, -3, N) if tree else None),
        max_per_request=caps,
        min_score=draw(st.sampled_from([None, -INF, INF, 0.0, -0.0, -1.0, -1e300, 1e300, 1e-45])),
    )


@st.composite
def block_inputs(draw, name):
    """tree_mask*, verify_*: the fixed-seed builders of tests/refs/blocks.py at drawn sizes."""
    B, seed = draw(st.integers(0, 4)), draw(st.integers(0, 2**20))
    if name.startswith("tree_mask"):
        inputs = tree_mask_block_inputs(B, draw(st.integers(0, 40)), seed)
    elif name == "verify_greedy":
        inputs = greedy_block_inputs(B, draw(st.integers(1, 40)), seed)
        if draw(st.booleans()):  # aliasing: the target agrees with every draft token
            inputs["target_tokens"] = inputs["slot_tokens"]
    else:
        inputs = sampling_block_inputs(
            B, draw(st.integers(1, 12)), draw(st.integers(1, 20)), seed, draft=draw(st.booleans())
        )
    return {k: layout(draw, v) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def valid_inputs(name):
    if name == "draft_cumprod":
        return draft_cumprod_inputs()
    return select_inputs() if name == "select" else block_inputs(name)


# -- spoiling a valid call -------------------------------------------------------------------------

DTYPES = [
    torch.float64,
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.uint8,
    torch.bool,
    torch.complex64,
]
BAD_SCALARS = {
    "budget": [-1, -(2**63), 2**63, 2**64, 2.5],
    "temperature": [0.0, -1.0, NAN, INF, -INF, 1e-39, 1e-320, 10**400],
    "min_score": [NAN, 10**400, "x"],
}


@st.composite
def spoiled_tensor(draw, t: torch.Tensor) -> torch.Tensor:
    how = draw(st.sampled_from(["dtype", "fewer dims", "more dims", "shorter", "longer", "meta", "sparse"]))
    if how == "dtype":
        return t.to(draw(st.sampled_from([d for d in DTYPES if d != t.dtype])))
    if how == "fewer dims":
        return t[0] if t.shape[0] else torch.zeros(t.shape[1:], dtype=t.dtype)
    if how == "more dims":
        return t.unsqueeze(draw(st.integers(0, t.dim())))
    if how in ("shorter", "longer"):
        dim = draw(st.integers(0, t.dim() - 1))
        if how == "shorter" and t.shape[dim]:
            return t.narrow(dim, 0, t.shape[dim] - 1)
        return (
            torch.cat([t, t.narrow(dim, 0, min(1, t.shape[dim]))], dim) if t.shape[dim] else t.unsqueeze(dim)
        )
    if how == "meta":
        return t.to("meta")
    return t.to_sparse()


@st.composite
def spoiled_call(draw, name, inputs):
    """`inputs` with one argument replaced by a wrong value (which may still be valid)."""
    arg = draw(st.sampled_from(sorted(k for k, v in inputs.items() if v is not None or k in BAD_SCALARS)))
    value = inputs[arg]
    if isinstance(value, torch.Tensor):
        bad = draw(spoiled_tensor(value))
    else:
        bad = draw(st.sampled_from(BAD_SCALARS.get(arg, [None])))
    return arg, {**inputs, arg: bad}
