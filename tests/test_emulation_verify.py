"""The verify_greedy and verify_sampling kernels (csrc/ops/verify_*/kernel.cuh), run on the CPU by
the emulation harness as torch.ops.tetris_emu, against the CPU ops: every output bit-identical.

verify_sampling sums over the vocabulary in parallel (a different order than the CPU's
sequential sums), so its inputs are dyadic, as the op tests' `dyadic=True` inputs: every sum
is exact and any order gives the same bits (drafted trees get at most three children per slot:
each rejection adds bits to the residual). Shapes cross the kernels' block boundaries: M
around the 32-thread warp and the 256-thread block of verify_greedy, V around one tile of
verify_sampling (4 tokens per thread, up to 1024 threads: 4096 tokens), V not a multiple of 4.
"""

import pytest
import torch
from hypothesis import given, settings

import tetris_ext
from refs.blocks import (
    GREEDY_SLOTS, SAMPLING_VOCABS, greedy_block_inputs, peaked_probs, sampling_block_inputs,
)
from refs.tree_mask import noncontiguous
from refs.verify import random_probs, verify_greedy_inputs, verify_sampling_inputs

if not tetris_ext.HAS_EMULATION:
    pytest.skip("built without TETRIS_EMULATION=1", allow_module_level=True)

GREEDY = (torch.ops.tetris.verify_greedy.default, torch.ops.tetris_emu.verify_greedy.default)
SAMPLING = (torch.ops.tetris.verify_sampling.default, torch.ops.tetris_emu.verify_sampling.default)


def assert_same(ops, inputs):
    cpu, emu = ops
    want, got = cpu(**inputs), emu(**inputs)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert torch.equal(g, w), (g, w)


# -- the op tests' inputs ----------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(verify_greedy_inputs())
def test_greedy_matches_cpu(inputs):
    assert_same(GREEDY, inputs)


@settings(max_examples=150, deadline=None)
@given(verify_sampling_inputs(dyadic=True))
def test_sampling_matches_cpu(inputs):
    assert_same(SAMPLING, inputs)


@settings(max_examples=30, deadline=None)
@given(verify_greedy_inputs(), verify_sampling_inputs(dyadic=True))
def test_noncontiguous_inputs(greedy_inputs, sampling_inputs):
    for ops, inputs in [(GREEDY, greedy_inputs), (SAMPLING, sampling_inputs)]:
        assert_same(ops, {k: None if v is None else noncontiguous(v) for k, v in inputs.items()})


# -- block-boundary shapes ---------------------------------------------------------------------


@pytest.mark.parametrize("M", GREEDY_SLOTS)
def test_greedy_block_boundaries(M):
    assert_same(GREEDY, greedy_block_inputs(3, M, seed=M))


@pytest.mark.parametrize("B", [33, 1025])
def test_greedy_many_requests(B):
    assert_same(GREEDY, greedy_block_inputs(B, 9, seed=B))


@pytest.mark.parametrize("V", SAMPLING_VOCABS)
@pytest.mark.parametrize("draft", [False, True])
def test_sampling_vocabulary_boundaries(V, draft):
    assert_same(SAMPLING, sampling_block_inputs(3, 9, V, seed=V, draft=draft))
    assert_same(SAMPLING, sampling_block_inputs(2, 9, V, seed=V + 1, draft=draft, normalised=False))
    assert_same(SAMPLING, sampling_block_inputs(3, 9, V, seed=V + 2, draft=draft, support=6))


@pytest.mark.parametrize("M", [33, 257])
@pytest.mark.parametrize("draft", [False, True])
def test_sampling_many_slots(M, draft):
    assert_same(SAMPLING, sampling_block_inputs(2, M, 40, seed=M, draft=draft))
    assert_same(SAMPLING, sampling_block_inputs(2, M, 300, seed=M, draft=draft, support=5))


def test_greedy_first_matching_child_among_many():
    """Stars of 1024 children, several with the target's token: the first one is taken (every
    thread scans several slots; the block-wide min must see each thread's first match)."""
    g = torch.Generator().manual_seed(9)
    B, M = 3, 1025
    tokens = torch.randint(0, 3, (B, M), generator=g)
    targets = torch.randint(0, 3, (B, M), generator=g)
    parents = torch.zeros(B, M, dtype=torch.int64)
    parents[:, 0] = -1
    assert_same(GREEDY, dict(slot_tokens=tokens, slot_parent=parents, target_tokens=targets))
    parents[:, 1:] = torch.arange(M - 1)  # a chain: the walk goes through many strides
    tokens[:, 1:] = targets[:, :-1]
    tokens[:, 900] = -1
    assert_same(GREEDY, dict(slot_tokens=tokens, slot_parent=parents, target_tokens=targets))


@pytest.mark.parametrize("V", [5, 129, 4096, 4099, 9000])
def test_sampling_cdf_boundaries(V):
    """u0 * sum(p) exactly equal to a partial sum of p (normalised dyadic rows, so sum(p) = 1
    and u0 = the partial sum): the sample is the next token with mass, not this one, wherever
    the partial sum falls relative to the threads' chunks and the tiles."""
    g = torch.Generator().manual_seed(V)
    B = 8
    target = peaked_probs((B, 1, V), 12, g, normalised=True) if V > 200 else random_probs((B, 1, V), g, True, True)
    cumsum = target[:, 0].cumsum(-1)
    u0 = torch.empty(B, 1)
    for b in range(B):
        below_one = torch.nonzero((target[b, 0] > 0) & (cumsum[b] < 1)).flatten()
        u0[b, 0] = cumsum[b, below_one[int(torch.randint(0, len(below_one), (1,), generator=g))]] if len(below_one) else 0.5
    inputs = dict(slot_tokens=torch.zeros(B, 1, dtype=torch.long), slot_parent=torch.full((B, 1), -1),
                  target_probs=target, draft_probs=None, uniforms=u0)
    assert_same(SAMPLING, inputs)
    sample = torch.ops.tetris_emu.verify_sampling(**inputs)[2][:, 0]
    assert torch.all(cumsum[torch.arange(B), sample] > u0[:, 0])  # past the tie, not on it


def test_sampling_bench_shape():
    """A batch of 17-slot trees over a 32000-token vocabulary (8 tiles per pass)."""
    assert_same(SAMPLING, sampling_block_inputs(4, 17, 32000, seed=0, draft=True, support=8))
    assert_same(SAMPLING, sampling_block_inputs(4, 17, 32000, seed=1, draft=False, support=8))


def test_sampling_strided_and_expanded_rows():
    """Rows with stride 2 (no vector loads), rows broadcast over the batch (stride 0), and
    contiguous rows that start off a 16-byte boundary (V = 4099)."""
    inputs = sampling_block_inputs(3, 6, 4099, seed=5, draft=True)
    assert_same(SAMPLING, {k: None if v is None else noncontiguous(v) for k, v in inputs.items()})
    expanded = dict(inputs, target_probs=inputs["target_probs"][:1].expand(3, 6, 4099),
                    draft_probs=inputs["draft_probs"][:, :1].expand(3, 6, 4099))
    assert_same(SAMPLING, expanded)


# -- edge values ---------------------------------------------------------------------------------


def single_row(target, u0, draft=None, tokens=(0,), parents=(-1,), uniforms=()):
    M = len(tokens)
    return dict(
        slot_tokens=torch.tensor([tokens]), slot_parent=torch.tensor([parents]),
        target_probs=torch.tensor(target, dtype=torch.float32).reshape(1, M, -1),
        draft_probs=None if draft is None else torch.tensor(draft, dtype=torch.float32).reshape(1, M, -1),
        uniforms=torch.tensor([[u0, *uniforms]], dtype=torch.float32),
    )


def test_sampling_edge_values():
    # Out-of-range uniforms never pick a token without mass.
    for u0 in [1.0, float("nan"), 2.0, -1.0, 0.0, 0.999]:
        assert_same(SAMPLING, single_row([[0.0, 0.5, 0.0, 0.25, 0.0]], u0))
    # Invalid probabilities count as zero; no mass anywhere gives -1.
    nan, inf = float("nan"), float("inf")
    assert_same(SAMPLING, single_row([[nan, -1.0, inf, 0.5, -inf]], 0.5))
    assert_same(SAMPLING, single_row([[nan, 0.0]], 0.5))
    # Nothing left of p after a rejection (u = 1): sample from the target itself.
    for draft in [None, [[0.0, 1.0, 0.0], [1, 0, 0]]]:
        assert_same(SAMPLING, single_row([[0.0, 0.5, 0.0], [0, 0, 1]], 0.3, draft=draft,
                                         tokens=(0, 1), parents=(-1, 0), uniforms=(1.0,)))
    # Huge and invalid child tokens are skipped.
    for bad in [-1, 4, 2**40]:
        assert_same(SAMPLING, single_row([[0.5, 0.5, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], 0.5,
                                         tokens=(0, bad, 1, 0), parents=(-1, 0, 0, 0),
                                         uniforms=(0.99, 0.2, 0.99)))


def test_greedy_huge_tokens_and_mixed_dtypes():
    tokens = torch.tensor([[0, 2**40, 5, 5], [0, -(2**40), 5, 7]])
    parents = torch.tensor([[-1, 0, 0, 2], [-1, 0, 1, 0]], dtype=torch.int32)
    targets = torch.tensor([[5, 0, 5, 9], [7, 5, 0, 1]], dtype=torch.int32)
    assert_same(GREEDY, dict(slot_tokens=tokens, slot_parent=parents, target_tokens=targets))


# -- harness-level properties --------------------------------------------------------------------


def test_outputs_are_fully_written(poisoned_empty):
    assert_same(GREEDY, greedy_block_inputs(5, 40, seed=1))
    assert_same(SAMPLING, sampling_block_inputs(5, 12, 300, seed=1, draft=True))
    assert_same(SAMPLING, sampling_block_inputs(5, 12, 300, seed=2, draft=False))


def test_reverse_schedule(monkeypatch):
    """The kernels do not depend on the order threads run between barriers (no races)."""
    monkeypatch.setenv("TETRIS_EMU_SCHEDULE", "reverse")
    assert_same(GREEDY, greedy_block_inputs(3, 300, seed=2))
    assert_same(SAMPLING, sampling_block_inputs(3, 12, 1000, seed=3, draft=True))
    assert_same(SAMPLING, sampling_block_inputs(3, 12, 1000, seed=4, draft=False))


def test_single_slot_and_empty_batch():
    for B in [0, 3]:
        g = torch.Generator().manual_seed(B)
        assert_same(GREEDY, dict(slot_tokens=torch.zeros(B, 1, dtype=torch.long),
                                 slot_parent=torch.full((B, 1), -1), target_tokens=torch.ones(B, 1, dtype=torch.long)))
        for draft in [False, True]:
            target = random_probs((B, 1, 7), g, dyadic=True, normalised=True)
            assert_same(SAMPLING, dict(slot_tokens=torch.zeros(B, 1, dtype=torch.long), slot_parent=torch.full((B, 1), -1),
                                       target_probs=target, draft_probs=target.clone() if draft else None,
                                       uniforms=torch.rand(B, 1, generator=g)))


@pytest.mark.parametrize(
    "ops,arg,value,error,message",
    [
        (GREEDY, "slot_tokens", torch.zeros(2, 0, dtype=torch.long), ValueError, "expected M >= 1 slots"),
        (GREEDY, "target_tokens", torch.zeros(2, 3), TypeError, "expected dtype Int or Long"),
        (SAMPLING, "target_probs", torch.zeros(2, 3, 4, dtype=torch.float16), TypeError, "expected dtype Float"),
        (SAMPLING, "draft_probs", torch.zeros(2, 3, 5), ValueError, r"expected size 4 \(V, as target_probs\)"),
    ],
)
def test_bad_arguments_raise_as_on_cpu(ops, arg, value, error, message):
    if ops is GREEDY:
        good = dict(slot_tokens=torch.zeros(2, 3, dtype=torch.long), slot_parent=torch.tensor([[-1, 0, 1], [-1, 0, 0]]),
                    target_tokens=torch.zeros(2, 3, dtype=torch.long))
        name = "verify_greedy"
    else:
        good = dict(slot_tokens=torch.zeros(2, 3, dtype=torch.long), slot_parent=torch.tensor([[-1, 0, 1], [-1, 0, 0]]),
                    target_probs=torch.full((2, 3, 4), 0.25), draft_probs=torch.full((2, 3, 4), 0.25),
                    uniforms=torch.zeros(2, 3))
        name = "verify_sampling"
    for op in ops:
        with pytest.raises(error, match=f"{name}: argument '{arg}': {message}"):
            op(**{**good, arg: value})
