"""The draft_cumprod CUDA kernels (run on the CPU by the emulation harness) against the CPU op.

torch.ops.tetris_emu.draft_cumprod executes csrc/ops/draft_cumprod/kernel.cuh, the text nvcc
compiles for the GPU. Same random inputs as the op tests (tests/refs); float outputs agree
within 1e-5 (the reduction order differs), -inf / NaN patterns exactly.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings

import tetris_ext
from refs.blocks import DRAFT_CUMPROD_BATCH_SHAPES, DRAFT_CUMPROD_VOCABS
from refs.blocks import draft_cumprod_block_inputs as inputs
from refs.draft_cumprod import draft_cumprod_inputs
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


# V around the vector widths and the blocks' unrolled stripes (tests/refs/blocks.py).
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("V", DRAFT_CUMPROD_VOCABS)
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


# Batch and candidate counts around warp, block and 1024 boundaries (tests/refs/blocks.py).
@pytest.mark.parametrize("B, N", DRAFT_CUMPROD_BATCH_SHAPES)
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
