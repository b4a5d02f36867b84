"""The tree_mask / tree_mask_packed kernels (csrc/ops/tree_mask/kernel.cuh), run on the CPU by the
emulation harness as torch.ops.tetris_emu, against the CPU ops: every output bit-identical.

Inputs: the op tests' hypothesis strategies (tests/refs/tree_mask.py), and block-boundary
shapes: N around the 32-thread warp and the 256-thread block (the slot scan then runs over
several tiles), B around the warp and 1024 (the cu_seqlens scan runs over two tiles).
"""

import pytest
import torch
from hypothesis import given, settings

import tetris_ext
from refs.blocks import TREE_MASK_BATCHES, TREE_MASK_CANDIDATES
from refs.blocks import tree_mask_block_inputs as random_block_inputs
from refs.tree_mask import noncontiguous, tree_mask_inputs

if not tetris_ext.HAS_EMULATION:
    pytest.skip("built without TETRIS_EMULATION=1", allow_module_level=True)

OPS = {
    "tree_mask": (torch.ops.tetris.tree_mask.default, torch.ops.tetris_emu.tree_mask.default),
    "tree_mask_packed": (torch.ops.tetris.tree_mask_packed.default, torch.ops.tetris_emu.tree_mask_packed.default),
}


def assert_same(inputs):
    for name, (cpu, emu) in OPS.items():
        want, got = cpu(**inputs), emu(**inputs)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and g.shape == w.shape, name
            assert torch.equal(g, w), (name, g, w)


@settings(max_examples=120, deadline=None)
@given(tree_mask_inputs())
def test_matches_cpu(inputs):
    assert_same(inputs)


@settings(max_examples=30, deadline=None)
@given(tree_mask_inputs())
def test_noncontiguous_inputs(inputs):
    assert_same({k: None if v is None else noncontiguous(v) for k, v in inputs.items()})


@pytest.mark.parametrize("N", TREE_MASK_CANDIDATES)
@pytest.mark.parametrize("kind", ["tree", "chain", "star"])
def test_block_boundary_candidates(N, kind):
    # Every candidate selected: with chains all N join (the scan's carry crosses every tile).
    inputs = random_block_inputs(2, N, seed=N, kind=kind, orphans=False, invalid=False)
    inputs["selected"][1] = True
    assert_same(inputs)
    assert_same(random_block_inputs(2, N, seed=N + 1, kind=kind))


@pytest.mark.parametrize("B", TREE_MASK_BATCHES)
def test_block_boundary_batch(B):
    assert_same(random_block_inputs(B, 5, seed=B))


def test_large_block():
    """The largest verification block the tests afford (a 1025 x 1025 mask per request)."""
    assert_same(random_block_inputs(2, 1024, seed=7, orphans=False))


def test_empty_and_single():
    for B, N in [(0, 0), (0, 5), (3, 0), (1, 1)]:
        for parents in [None, torch.full((B, N), -1, dtype=torch.int32)]:
            assert_same(dict(selected=torch.ones(B, N, dtype=torch.bool), parents=parents,
                             prefix_lens=torch.arange(B, dtype=torch.int32)))


def test_prefix_positions_wrap_instead_of_overflowing():
    assert_same(dict(selected=torch.ones(1, 2, dtype=torch.bool), parents=None,
                     prefix_lens=torch.tensor([2**63 - 1])))


def test_outputs_are_fully_written(poisoned_empty):
    assert_same(random_block_inputs(40, 70, seed=3))
    assert_same(random_block_inputs(3, 0, seed=3))


def test_reverse_schedule(monkeypatch):
    """The kernels do not depend on the order threads run between barriers (no races)."""
    inputs = random_block_inputs(5, 300, seed=11)
    monkeypatch.setenv("TETRIS_EMU_SCHEDULE", "reverse")
    assert_same(inputs)


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize(
    "arg,value,error,message",
    [
        ("selected", torch.ones(2, 3), TypeError, "expected dtype Bool"),
        ("parents", torch.zeros(2, 4, dtype=torch.long), ValueError, r"expected size 3 \(N\)"),
        ("prefix_lens", torch.tensor([5.0, 6.0]), TypeError, "expected dtype Int or Long"),
    ],
)
def test_bad_arguments_raise_as_on_cpu(name, arg, value, error, message):
    good = dict(selected=torch.ones(2, 3, dtype=torch.bool), parents=torch.tensor([[-1, 0, 1], [-1, -1, 0]]),
                prefix_lens=torch.tensor([5, 6]))
    with pytest.raises(error, match=f"{name}: argument '{arg}': {message}"):
        OPS[name][1](**{**good, arg: value})
