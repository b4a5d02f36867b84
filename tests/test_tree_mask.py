"""tree_mask and tree_mask_packed: against the reference in tests/refs/tree_mask.py, worked
examples, edge values and argument checks on every backend (the `backend` fixture,
tests/conftest.py); the kernels against the CPU ops on random and block-boundary inputs
(`kernel_backend`: every output bit-identical). Block-boundary shapes: N around the 32-thread
warp and the 256-thread block (the slot scan then runs over several tiles), B around the warp
and 1024 (the cu_seqlens scan runs over two tiles)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tetris_ext  # noqa: F401  (registers torch.ops.tetris)
from refs.backends import assert_matches_cpu, assert_outputs_match, to_device
from refs.blocks import TREE_MASK_BATCHES, TREE_MASK_CANDIDATES, tree_mask_block_inputs
from refs.tree_mask import (
    noncontiguous,
    random_tree_parents,
    tree_mask_inputs,
    tree_mask_packed_ref,
    tree_mask_ref,
)

tree_mask = torch.ops.tetris.tree_mask.default
tree_mask_packed = torch.ops.tetris.tree_mask_packed.default
TREE_MASK_OPS = ["tree_mask", "tree_mask_packed"]
SETTINGS = settings(max_examples=150, deadline=None)


@SETTINGS
@given(tree_mask_inputs())
def test_dense_matches_reference(backend, inputs):
    assert_outputs_match(backend("tree_mask", inputs), tree_mask_ref(**inputs))


@SETTINGS
@given(tree_mask_inputs())
def test_packed_matches_reference(backend, inputs):
    assert_outputs_match(backend("tree_mask_packed", inputs), tree_mask_packed_ref(**inputs))


@SETTINGS
@given(tree_mask_inputs(max_n=20))
def test_packed_is_packbits_of_dense(backend, inputs):
    slot_index, _, _, mask = (t.cpu() for t in backend("tree_mask", inputs))
    cu_seqlens, packed = (t.cpu() for t in backend("tree_mask_packed", inputs))
    np.testing.assert_array_equal(packed.numpy(), np.packbits(mask.numpy(), axis=-1, bitorder="little"))
    query_lens = (slot_index >= 0).sum(1) + 1
    assert cu_seqlens.tolist() == [0] + query_lens.cumsum(0).tolist()


@SETTINGS
@given(tree_mask_inputs(orphans=False))
def test_ancestor_closed_selection_fills_the_block(backend, inputs):
    """Without orphans every selected candidate gets a slot, in increasing n."""
    selected = inputs["selected"]
    slot_index, slot_parent, positions, mask = (t.cpu() for t in backend("tree_mask", inputs))
    counts = (slot_index >= 0).sum(1)
    assert torch.equal(counts, selected.sum(1))
    for b in range(selected.shape[0]):
        chosen = slot_index[b, 1 : 1 + counts[b]]
        assert torch.equal(chosen, selected[b].nonzero()[:, 0])
        assert torch.all(slot_index[b, 1 + counts[b] :] == -1)
        # a parent's slot comes before its child's
        assert torch.all(slot_parent[b, 1 : 1 + counts[b]] < torch.arange(1, 1 + counts[b]))


def test_worked_example(backend):
    selected = torch.tensor([[True, True, False, True, True]])
    parents = torch.tensor([[-1, 0, 0, 2, -1]])  # candidate 3's parent (2) is not selected
    slot_index, slot_parent, positions, mask = backend.run("tree_mask", selected, parents, torch.tensor([10]))
    assert slot_index.tolist() == [[-1, 0, 1, 4, -1, -1]]
    assert slot_parent.tolist() == [[-1, 0, 1, 0, -1, -1]]
    assert positions.tolist() == [[10, 11, 12, 11, 10, 10]]
    assert mask[0].int().tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 0, 0, 1, 0, 0],
        [0, 0, 0, 0, 1, 0],
        [0, 0, 0, 0, 0, 1],
    ]
    cu_seqlens, packed = backend.run("tree_mask_packed", selected, parents, torch.tensor([10]))
    assert cu_seqlens.tolist() == [0, 4]
    assert packed[0, :, 0].tolist() == [1, 3, 7, 9, 16, 32]


@settings(max_examples=40, deadline=None)
@given(tree_mask_inputs(max_batch=3, max_n=8, invalid=False), st.integers(0, 2**31 - 1))
def test_model_layout_equals_causal_attention_per_path(inputs, seed):
    """Feeding the block to attention as the docs say (positions, and the 4D additive mask
    [B, 1, M, past + M] over the cached prefix plus the block) gives every slot exactly the
    output causal attention gives at the end of its path (prefix, root, ancestors, itself)."""
    selected, parents = inputs["selected"], inputs["parents"]
    B, N = selected.shape
    M, past = N + 1, 3
    prefix_lens = torch.full((B,), past)
    slot_index, slot_parent, positions, mask = tree_mask(selected, parents, prefix_lens)
    g = torch.Generator().manual_seed(seed)
    d = 8
    token_emb, pos_emb = (
        torch.randn(50, d, generator=g, dtype=torch.float64),
        torch.randn(64, d, generator=g, dtype=torch.float64),
    )
    wq, wk, wv = (torch.randn(d, d, generator=g, dtype=torch.float64) for _ in range(3))
    prefix_tokens = torch.randint(0, 50, (B, past), generator=g)
    slot_tokens = torch.randint(0, 50, (B, M), generator=g)

    def hidden(tokens, pos):
        return token_emb[tokens] + pos_emb[pos]

    cache = hidden(prefix_tokens, torch.arange(past).expand(B, past))  # [B, past, d]
    block = hidden(slot_tokens, positions)  # [B, M, d]
    keys = torch.cat([cache, block], 1)
    visible = torch.cat([torch.ones(B, M, past, dtype=torch.bool), mask], 2)
    additive = torch.zeros(B, 1, M, past + M, dtype=torch.float64).masked_fill(
        ~visible[:, None], float("-inf")
    )
    tree_out = torch.nn.functional.scaled_dot_product_attention(
        (block @ wq)[:, None], (keys @ wk)[:, None], (keys @ wv)[:, None], attn_mask=additive
    )[:, 0]
    for b in range(B):
        count = int((slot_index[b] >= 0).sum())
        for s in range(count + 1):
            path, node = [], s
            while node != -1:
                path.append(node)
                node = int(slot_parent[b, node])
            path.reverse()  # root ... s
            seq = torch.cat([cache[b], hidden(slot_tokens[b, path], past + torch.arange(len(path)))])
            q = seq[-1:] @ wq
            causal_out = torch.softmax(q @ (seq @ wk).T / d**0.5, -1) @ (seq @ wv)
            torch.testing.assert_close(tree_out[b, s], causal_out[0])


@pytest.mark.parametrize("B,N", [(0, 0), (0, 5), (3, 0), (1, 1)])
@pytest.mark.parametrize("chains", [True, False])
def test_empty_and_single(backend, B, N, chains):
    inputs = dict(
        selected=torch.ones(B, N, dtype=torch.bool),
        parents=None if chains else torch.full((B, N), -1),
        prefix_lens=torch.arange(B),
    )
    assert_outputs_match(backend("tree_mask", inputs), tree_mask_ref(**inputs))
    assert_outputs_match(backend("tree_mask_packed", inputs), tree_mask_packed_ref(**inputs))
    for name in TREE_MASK_OPS:
        assert_matches_cpu(backend, name, inputs)


@settings(max_examples=40, deadline=None)
@given(tree_mask_inputs())
def test_noncontiguous_inputs(backend, inputs):
    strided = {k: None if v is None else noncontiguous(v) for k, v in inputs.items()}
    assert_outputs_match(backend("tree_mask", strided), tree_mask_ref(**inputs))
    assert_outputs_match(backend("tree_mask_packed", strided), tree_mask_packed_ref(**inputs))


def test_deterministic_and_batch_independent(backend):
    """Requests run in parallel; results equal one request at a time, bit for bit, every run."""
    g = torch.Generator().manual_seed(0)
    B, N = 300, 24
    parents = random_tree_parents(B, N, g)
    selected = torch.rand(B, N, generator=g) < 0.7
    prefix_lens = torch.randint(0, 1000, (B,), generator=g)
    inputs = dict(selected=selected, parents=parents, prefix_lens=prefix_lens)
    first = backend("tree_mask", inputs) + backend("tree_mask_packed", inputs)
    again = backend("tree_mask", inputs) + backend("tree_mask_packed", inputs)
    assert_outputs_match(again, first)
    for b in range(0, B, 37):
        row = backend("tree_mask", {k: v[b : b + 1] for k, v in inputs.items()})
        assert_outputs_match(row, tuple(t[b : b + 1] for t in first[:4]))


def test_prefix_positions_wrap_instead_of_overflowing(backend):
    inputs = dict(
        selected=torch.ones(1, 2, dtype=torch.bool), parents=None, prefix_lens=torch.tensor([2**63 - 1])
    )
    _, _, positions, _ = backend("tree_mask", inputs)
    assert positions.tolist() == [[2**63 - 1, -(2**63), -(2**63) + 1]]
    for name in TREE_MASK_OPS:
        assert_matches_cpu(backend, name, inputs)


@pytest.mark.parametrize("op", [tree_mask, tree_mask_packed])
@pytest.mark.parametrize("chains", [True, False])
def test_opcheck(op, chains):
    g = torch.Generator().manual_seed(1)
    selected = torch.rand(3, 9, generator=g) < 0.6
    parents = None if chains else random_tree_parents(3, 9, g)
    torch.library.opcheck(op, (selected, parents, torch.tensor([4, 0, 9], dtype=torch.int32)))


# -- argument checks (a tensor on another device: tests/test_kernel_backends.py) ---------------

GOOD = dict(
    selected=torch.ones(2, 3, dtype=torch.bool),
    parents=torch.tensor([[-1, 0, 1], [-1, -1, 0]]),
    prefix_lens=torch.tensor([5, 6]),
)
BAD = [
    ("selected", torch.ones(2, 3), TypeError, "expected dtype Bool"),
    ("selected", torch.ones(2, 3, 1, dtype=torch.bool), ValueError, "expected a 2-D tensor"),
    ("parents", torch.zeros(2, 3), TypeError, "expected dtype Int or Long"),
    ("parents", torch.zeros(2, 3, dtype=torch.int16), TypeError, "expected dtype Int or Long"),
    ("parents", torch.zeros(6, dtype=torch.long), ValueError, "expected a 2-D tensor"),
    ("parents", torch.zeros(3, 3, dtype=torch.long), ValueError, r"expected size 2 \(B\)"),
    ("parents", torch.zeros(2, 4, dtype=torch.long), ValueError, r"expected size 3 \(N\)"),
    ("prefix_lens", torch.tensor([5.0, 6.0]), TypeError, "expected dtype Int or Long"),
    ("prefix_lens", torch.tensor([[5, 6]]), ValueError, "expected a 1-D tensor"),
    ("prefix_lens", torch.tensor([5, 6, 7]), ValueError, r"expected size 2 \(B\)"),
]


def call_kernel(backend, name, **kwargs):
    """Calls the backend's kernel itself, which checks its arguments (not the fake one)."""
    return backend.kernel(name)(**to_device(kwargs, backend.device))


@pytest.mark.parametrize("name", TREE_MASK_OPS)
@pytest.mark.parametrize("arg,value,error,message", BAD)
def test_bad_arguments(backend, name, arg, value, error, message):
    with pytest.raises(error, match=f"{name}: argument '{arg}': {message}"):
        call_kernel(backend, name, **{**GOOD, arg: value})


def test_good_arguments_pass_the_same_path(backend):
    call_kernel(backend, "tree_mask", **GOOD)
    call_kernel(backend, "tree_mask_packed", **GOOD)


def test_packed_rejects_blocks_beyond_int32_offsets():
    B, N = 2**16, 2**15  # B * (N + 1) > 2^31 - 1; expanded, so nothing is allocated
    selected = torch.zeros(1, 1, dtype=torch.bool).expand(B, N)
    with pytest.raises(ValueError, match=r"tree_mask_packed: argument 'selected': expected B \* \(N \+ 1\)"):
        tree_mask_packed(selected, None, torch.zeros(1, dtype=torch.long).expand(B))


# -- the kernels against the CPU ops ------------------------------------------------------------


@pytest.mark.parametrize("name", TREE_MASK_OPS)
@settings(max_examples=150, deadline=None)
@given(inputs=tree_mask_inputs())
def test_kernel_matches_cpu(kernel_backend, name, inputs):
    assert_matches_cpu(kernel_backend, name, inputs)
    assert_matches_cpu(
        kernel_backend, name, {k: None if v is None else noncontiguous(v) for k, v in inputs.items()}
    )


@pytest.mark.parametrize("name", TREE_MASK_OPS)
@pytest.mark.parametrize("N", TREE_MASK_CANDIDATES)
@pytest.mark.parametrize("kind", ["tree", "chain", "star"])
def test_kernel_block_boundaries(kernel_backend, name, N, kind):
    # Every candidate selected: with chains all N join (the scan's carry crosses every tile).
    closed = tree_mask_block_inputs(2, N, seed=N, kind=kind, orphans=False, invalid=False)
    closed["selected"][1] = True
    assert_matches_cpu(kernel_backend, name, closed)
    assert_matches_cpu(kernel_backend, name, tree_mask_block_inputs(2, N, seed=N + 1, kind=kind))


@pytest.mark.parametrize("name", TREE_MASK_OPS)
@pytest.mark.parametrize("B", TREE_MASK_BATCHES)
def test_kernel_batch_boundaries(kernel_backend, name, B):
    assert_matches_cpu(kernel_backend, name, tree_mask_block_inputs(B, 5, seed=B))


@pytest.mark.parametrize("name", TREE_MASK_OPS)
def test_kernel_large_block(kernel_backend, name):
    """The largest verification block the emulator affords (a 1025 x 1025 mask per request)."""
    assert_matches_cpu(kernel_backend, name, tree_mask_block_inputs(2, 1024, seed=7, orphans=False))


@pytest.mark.parametrize("name", TREE_MASK_OPS)
def test_kernel_outputs_are_fully_written(kernel_backend, poisoned_empty, name):
    assert_matches_cpu(kernel_backend, name, tree_mask_block_inputs(40, 70, seed=3))
    assert_matches_cpu(kernel_backend, name, tree_mask_block_inputs(3, 0, seed=3))


# 1025 x 1025 masks for 64 requests, and 4096 requests: too large for the emulator.
@pytest.mark.parametrize("name", TREE_MASK_OPS)
@pytest.mark.parametrize("B, N", [(2, 1024), (64, 1024), (4096, 16)])
def test_cuda_large(cuda, name, B, N):
    assert_matches_cpu(cuda, name, tree_mask_block_inputs(B, N, seed=B, orphans=False))


@pytest.mark.parametrize("name", TREE_MASK_OPS)
def test_emulated_reverse_schedule(emulated, monkeypatch, name):
    """The kernels do not depend on the order threads run between barriers (no races)."""
    inputs = tree_mask_block_inputs(5, 300, seed=11)
    monkeypatch.setenv("TETRIS_EMU_SCHEDULE", "reverse")
    assert_matches_cpu(emulated, name, inputs)
