"""The select_prefixes CUDA kernel (run on the CPU by the emulation harness) against the CPU op.

torch.ops.tetris_emu.select_prefixes executes csrc/ops/select_prefixes/kernel.cuh, the text nvcc
compiles for the GPU. The lengths written must be identical, ties included.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings

import tetris_ext
from refs.select_prefixes import random_probs, select_prefixes_inputs

pytestmark = pytest.mark.skipif(
    not tetris_ext.HAS_EMULATION, reason="built without TETRIS_EMULATION=1"
)

cpu_op = torch.ops.tetris.select_prefixes.default
emu_op = torch.ops.tetris_emu.select_prefixes.default


def assert_emulation_matches_cpu(probs, rows, lengths, budget):
    expected, actual = lengths.clone(), lengths.clone()
    cpu_op(probs, rows, expected, budget)
    emu_op(probs, rows, actual, budget)
    assert torch.equal(actual, expected), f"{actual} != {expected}"


@settings(max_examples=200, deadline=None)
@given(select_prefixes_inputs())
def test_matches_cpu(kw):
    assert_emulation_matches_cpu(kw["probs"], kw["rows"], kw["lengths"], kw["budget"])


def block_inputs(B, S, style, seed, budget=None):
    g = torch.Generator().manual_seed(seed)
    probs = random_probs(g, B + 5, S, style)
    rows = torch.randperm(B + 5, generator=g)[:B]
    lengths = torch.randint(0, S + 2, (B,), generator=g, dtype=torch.int32)
    return probs, rows, lengths, (B * S) // 3 + 1 if budget is None else budget


# B around the warp, the 1024-thread block (requests per thread > 1 beyond it), and B * S past
# what shared memory holds (the kernel's global-workspace path, from 54,016 positions on).
@pytest.mark.parametrize("B, S", [(1, 8), (31, 8), (33, 3), (1023, 8), (1024, 8), (1025, 8),
                                  (3000, 5), (7000, 8), (8192, 8)])
@pytest.mark.parametrize("style", ["ties", "continuous", "specials"])
def test_block_boundaries(B, S, style):
    assert_emulation_matches_cpu(*block_inputs(B, S, style, seed=B + S))


def test_budget_extremes():
    for budget in [0, 1, 299, 300, 301, 10**9]:
        assert_emulation_matches_cpu(*block_inputs(50, 6, "ties", seed=budget % 97, budget=budget))


# Threads in the opposite order (the harness's reverse schedule) give the same answer.
@pytest.mark.parametrize("B, S", [(5, 7), (256, 8), (2100, 4)])
def test_reverse_thread_order(monkeypatch, B, S):
    monkeypatch.setenv("TETRIS_EMU_SCHEDULE", "reverse")
    assert_emulation_matches_cpu(*block_inputs(B, S, "ties", seed=S))
