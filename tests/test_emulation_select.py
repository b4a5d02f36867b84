"""The select CUDA kernel (run on the CPU by the emulation harness) against the CPU op.

torch.ops.tetris_emu.select executes csrc/ops/select/kernel.cuh, the text nvcc compiles for the
GPU. Same random inputs as the op tests (tests/refs); outputs must be bit-identical, ties
included.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings

import tetris_ext
from refs.blocks import SELECT_BENCH_SHAPES, SELECT_BLOCK_SHAPES
from refs.blocks import select_block_inputs as inputs
from refs.select import select_inputs

pytestmark = pytest.mark.skipif(
    not tetris_ext.HAS_EMULATION, reason="built without TETRIS_EMULATION=1"
)

cpu_op = torch.ops.tetris.select.default
emu_op = torch.ops.tetris_emu.select.default


def assert_emulation_matches_cpu(kw):
    args = (kw["scores"], kw["budget"], kw["parents"], kw["max_per_request"], kw["min_score"])
    expected = cpu_op(*args)
    actual = emu_op(*args)
    assert actual[0].dtype == torch.bool and actual[1].dtype == torch.int32
    assert torch.equal(actual[0], expected[0]), f"selected\n{actual[0]}\n!=\n{expected[0]}"
    assert torch.equal(actual[1], expected[1]), f"counts {actual[1]} != {expected[1]}"


@settings(max_examples=200, deadline=None)
@given(select_inputs())
def test_matches_cpu(kw):
    assert_emulation_matches_cpu(kw)


@settings(max_examples=40, deadline=None)
@given(select_inputs(max_batch=70, max_candidates=40))
def test_matches_cpu_larger(kw):
    assert_emulation_matches_cpu(kw)


# B, N and B * N around warp, 256 and block boundaries (tests/refs/blocks.py), with budgets
# that cut through ties ("ties" scores have 7 distinct values).
@pytest.mark.parametrize("B, N", SELECT_BLOCK_SHAPES)
@pytest.mark.parametrize("style", ["ties", "paths"])
@pytest.mark.parametrize("tree, caps", [(False, False), (True, False), (True, True), (False, True)])
def test_block_boundaries(B, N, style, tree, caps):
    budget = (B * N) // 3 + 1
    assert_emulation_matches_cpu(inputs(B, N, budget, style=style, tree=tree, caps=caps, seed=B + N))


# The bench's largest shapes (from B * N = 32768 on, the kernel's global-memory path).
@pytest.mark.parametrize("N, budget", SELECT_BENCH_SHAPES)
@pytest.mark.parametrize("style", ["ties", "paths"])
def test_bench_shapes(N, budget, style):
    assert_emulation_matches_cpu(inputs(1024, N, budget, style=style, caps=True, min_score=-40.0))


def test_budget_extremes():
    for budget in [0, 1, 299, 300, 301, 10**9]:
        assert_emulation_matches_cpu(inputs(10, 30, budget, style="ties", caps=True))


# Threads in the opposite order (the harness's reverse schedule) give the same answer.
@pytest.mark.parametrize("B, N, budget", [(5, 7, 9), (64, 33, 700), (1024, 16, 2048)])
def test_reverse_thread_order(monkeypatch, B, N, budget):
    monkeypatch.setenv("TETRIS_EMU_SCHEDULE", "reverse")
    assert_emulation_matches_cpu(inputs(B, N, budget, style="ties", caps=True, seed=N))
