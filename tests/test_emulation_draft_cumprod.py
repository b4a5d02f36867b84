"""The draft_cumprod CUDA kernels (run on the CPU by the emulation harness) against the CPU op.

torch.ops.tetris_emu.draft_cumprod executes csrc/kernels/draft_cumprod.cuh, the text nvcc
compiles for the GPU. Same random inputs as the op tests (tests/refs); float outputs agree
within 1e-5 (the reduction order differs), -inf / NaN patterns exactly.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings

import tetris_ext
from refs.draft_cumprod import draft_cumprod_inputs, random_logits, random_parents, random_tokens
from refs.layouts import with_layout

pytestmark = pytest.mark.skipif(
    not tetris_ext.HAS_EMULATION, reason="built without TETRIS_EMULATION=1"
)

cpu_op = torch.ops.tetris.draft_cumprod.default
emu_op = torch.ops.tetris_emu.draft_cumprod.default


def assert_emulation_matches_cpu(kw):
    expected = cpu_op(kw["logits"], kw["tokens"], kw["parents"], kw["temperature"])
    actual = emu_op(kw["logits"], kw["tokens"], kw["parents"], kw["temperature"])
    for a, e in zip(actual, expected):
        assert a.dtype == torch.float32 and a.shape == e.shape
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5, equal_nan=True)


@settings(max_examples=150, deadline=None)
@given(draft_cumprod_inputs())
def test_matches_cpu(kw):
    assert_emulation_matches_cpu(kw)


def inputs(B, N, V, dtype=torch.float32, tree=True, seed=0, specials=True, invalid_rate=0.1):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        logits=random_logits(gen, B, N, V, 4.0, specials).to(dtype),
        tokens=random_tokens(gen, B, N, V, invalid_rate),
        parents=random_parents(gen, B, N, invalid_rate) if tree else None,
        temperature=0.7,
    )


# V around the vector widths (4 float32 / 8 half per 16 bytes) and the per-thread unrolled
# stripes of the 32..256-thread blocks, so that the head, vector body and tail all occur.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("V", [1, 3, 4, 5, 7, 8, 9, 31, 33, 127, 128, 129, 511, 513, 1023, 1025, 4097])
def test_vocabulary_sizes(dtype, V):
    assert_emulation_matches_cpu(inputs(2, 3, V, dtype, seed=V))


# Rows that start at every misalignment from a 16-byte boundary (a sliced vocabulary), and
# strided rows (every other logit), which take the scalar paths.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("offset", range(8))
def test_misaligned_rows(dtype, offset):
    kw = inputs(2, 3, 300, dtype, seed=offset)
    wide = torch.randn(2, 3, 300 + offset + 5).to(dtype)
    wide[..., offset : offset + 300] = kw["logits"]
    kw["logits"] = wide[..., offset : offset + 300]
    assert_emulation_matches_cpu(kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["transposed", "strided"])
def test_layouts(dtype, layout):
    kw = inputs(3, 4, 200, dtype, seed=1)
    kw["logits"] = with_layout(kw["logits"], layout)
    kw["tokens"] = with_layout(kw["tokens"], layout)
    assert_emulation_matches_cpu(kw)


# Batch and candidate counts around warp (32), block (128 requests per path-sum block, 256)
# and 1024 boundaries.
@pytest.mark.parametrize(
    "B, N", [(1, 1), (31, 33), (32, 32), (33, 31), (127, 2), (128, 2), (129, 2), (255, 1), (257, 1), (1, 1023), (1, 1025), (1025, 1)]
)
@pytest.mark.parametrize("tree", [False, True])
def test_batch_shapes(B, N, tree):
    assert_emulation_matches_cpu(inputs(B, N, 6, tree=tree, seed=B * N))


def test_empty():
    for B, N, V in [(0, 3, 5), (3, 0, 5), (0, 0, 0), (2, 3, 0)]:
        assert_emulation_matches_cpu(inputs(B, N, V))


# The bench shape (B=64, N=8, V=32000), in float32 and bfloat16.
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bench_shape(dtype):
    assert_emulation_matches_cpu(inputs(64, 8, 32000, dtype, specials=False, invalid_rate=0.02))


# Threads of each block in the opposite order (the harness's reverse schedule) give the same
# answer: the kernels have no races that the default order would hide.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("B, N, V", [(3, 5, 37), (2, 4, 1000), (40, 3, 9)])
def test_reverse_thread_order(monkeypatch, dtype, B, N, V):
    monkeypatch.setenv("TETRIS_EMU_SCHEDULE", "reverse")
    assert_emulation_matches_cpu(inputs(B, N, V, dtype, seed=V))
