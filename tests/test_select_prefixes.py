"""tetris::select_prefixes: its definition, vLLM's adaptive-verification semantics, the values
it must tolerate, and its argument checks (the C++ ones and the fake's), on every backend where
they are not about the CPU op itself (the `backend` fixture, tests/conftest.py); the kernel
against the CPU op (`kernel_backend`): the lengths written identical, ties included. The CUDA
kernel's stream, graph and launch checks: tests/test_cuda.py."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from torch._subclasses.fake_tensor import FakeTensorMode

import tetris_ext  # noqa: F401  (registers torch.ops.tetris)
from refs.backends import same_layout_on
from refs.select_prefixes import (
    adaptive_verification_counts,
    admitted_scores,
    random_probs,
    select_prefixes_inputs,
    select_prefixes_ref,
)

select_prefixes = torch.ops.tetris.select_prefixes.default


def run(kw, op=select_prefixes):
    """The lengths the op writes, checking that it writes nothing else (the poison of strided
    layouts stays) and leaves the inputs alone."""
    lengths = kw["lengths"]
    base = lengths._base.clone() if lengths._base is not None else None
    probs, rows = kw["probs"].clone(), kw["rows"].clone()
    op(kw["probs"], kw["rows"], lengths, kw["budget"])
    if base is not None:
        untouched = torch.ones_like(base, dtype=torch.bool)
        untouched[..., ::2] = False
        assert torch.equal(lengths._base[untouched], base[untouched])
    assert torch.equal(kw["probs"].nan_to_num(7.0), probs.nan_to_num(7.0)) and torch.equal(kw["rows"], rows)
    return lengths.clone()


def run_on(backend, probs, rows, lengths, budget):
    """The lengths select_prefixes writes on `backend` (arguments moved there with their layout;
    `lengths` itself is left as it is)."""
    probs, rows, written = (same_layout_on(t, backend.device) for t in (probs, rows, lengths))
    backend.op("select_prefixes")(probs, rows, written, budget)
    return written.cpu()


@settings(max_examples=400, deadline=None)
@given(select_prefixes_inputs())
def test_matches_the_definition(kw):
    expected = select_prefixes_ref(kw["probs"], kw["rows"], kw["lengths"].clone(), kw["budget"])
    assert torch.equal(run(kw), expected)


def vllm_case(g, B, S, style, R=None):
    """Inputs as vLLM's runner has them: confidences [R >= B, S], a permutation of rows, caps in
    [0, S], and a budget below the sum of the caps (the only case it calls the step in)."""
    R = R or B + 3
    probs = random_probs(g, R, S, style)
    rows = torch.randperm(R, generator=g)[:B].int()
    caps = torch.randint(0, S + 1, (B,), generator=g, dtype=torch.int32)
    budget = int(torch.randint(0, max(int(caps.sum()), 1), (1,), generator=g))
    return probs, rows, caps, budget


@pytest.mark.parametrize("B, S", [(1, 1), (3, 4), (8, 8), (64, 8), (256, 8), (37, 5)])
def test_equals_vllm_counts_without_ties(backend, B, S):
    g = torch.Generator().manual_seed(B * 100 + S)
    for _ in range(60):
        probs, rows, caps, budget = vllm_case(g, B, S, "continuous")
        lengths = run_on(backend, probs, rows, caps, budget)
        assert torch.equal(lengths, adaptive_verification_counts(probs, rows, caps, budget, S))


@pytest.mark.parametrize("B, S", [(3, 4), (8, 8), (64, 8), (256, 8)])
def test_with_ties_same_count_and_score_as_vllm(backend, B, S):
    g = torch.Generator().manual_seed(B + S)
    for _ in range(60):
        probs, rows, caps, budget = vllm_case(g, B, S, "ties")
        lengths = run_on(backend, probs, rows, caps, budget)
        theirs = adaptive_verification_counts(probs, rows, caps, budget, S)
        assert int(lengths.sum()) == int(theirs.sum()) == budget
        assert admitted_scores(probs, rows, caps, lengths) == admitted_scores(probs, rows, caps, theirs)
        assert bool((lengths <= caps).all())


def test_ties_go_to_the_lowest_request_then_position(backend):
    probs = torch.tensor([[1.0, 0.5], [0.5, 1.0], [0.5, 1.0]])
    # Path probabilities: request 0 (row 2): 0.5, 0.5; request 1 (row 1): 0.5, 0.5; request 2 (row 0): 1, 0.5.
    rows = torch.tensor([2, 1, 0])
    for budget, expected in [(1, [0, 0, 1]), (2, [1, 0, 1]), (3, [2, 0, 1]), (4, [2, 1, 1]), (5, [2, 2, 1])]:
        lengths = run_on(backend, probs, rows, torch.tensor([2, 2, 2]), budget)
        assert lengths.tolist() == expected, budget


def test_values_outside_the_domain(backend):
    nan, inf = float("nan"), float("inf")
    probs = torch.tensor([[0.9, nan, 0.9], [-0.5, 0.9, 0.9], [1.5, 0.8, 2.0], [inf, 0.7, 0.1]])
    rows = torch.tensor([0, 1, 2, 3, 4, -1])
    lengths = run_on(backend, probs, rows, torch.tensor([3, 3, 3, 3, 3, 3]), 100)
    # NaN ends a chain; a negative probability counts as 0 (the path stays eligible, at 0);
    # > 1 counts as 1; rows outside [0, R) select nothing.
    assert lengths.tolist() == [1, 3, 3, 3, 0, 0]
    lengths = run_on(backend, probs, rows, torch.tensor([3, 3, 3, 3, 0, 0]), 4)
    assert lengths.tolist() == [1, 0, 2, 1, 0, 0]  # 1.0, 1.0 (request 2), 1.0, 0.9 (request 0 / 3)


def test_caps_outside_zero_to_steps(backend):
    probs = torch.full((3, 4), 0.5)
    lengths = run_on(
        backend, probs, torch.tensor([0, 1, 2]), torch.tensor([-3, 9, 2], dtype=torch.int32), 100
    )
    assert lengths.tolist() == [0, 4, 2]


def test_budget_extremes_and_empty(backend):
    probs = torch.rand(5, 3)
    for budget, total in [(0, 0), (1, 1), (14, 14), (15, 15), (10**9, 15)]:
        lengths = run_on(backend, probs, torch.arange(5), torch.full((5,), 3), budget)
        assert int(lengths.sum()) == total
    run_on(backend, torch.rand(0, 3), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), 4)
    lengths = run_on(backend, torch.rand(2, 0), torch.tensor([0, 1]), torch.tensor([2, 5]), 4)
    assert lengths.tolist() == [0, 0]


def test_large_batch_deterministic(backend):
    g = torch.Generator().manual_seed(5)
    probs, rows, caps, budget = vllm_case(g, 4096, 16, "ties", R=5000)
    first = run_on(backend, probs, rows, caps, budget)
    assert int(first.sum()) == budget
    assert torch.equal(first, select_prefixes_ref(probs, rows, caps, budget))
    for _ in range(3):
        assert torch.equal(run_on(backend, probs, rows, caps, budget), first)


def opcheck_inputs():
    g = torch.Generator().manual_seed(3)
    yield (
        torch.rand(6, 4, generator=g),
        torch.tensor([4, 0, 2], dtype=torch.int32),
        torch.tensor([4, 1, 3], dtype=torch.int32),
        5,
    )
    yield (random_probs(g, 5, 8, "ties"), torch.arange(5), torch.full((5,), 8), 17)
    yield (random_probs(g, 3, 2, "specials"), torch.tensor([2, 7, -1]), torch.tensor([3, 2, 1]), 0)
    yield (
        torch.rand(2, 3, generator=g),
        torch.zeros(0, dtype=torch.long),
        torch.zeros(0, dtype=torch.int32),
        1,
    )


@pytest.mark.parametrize("args", list(opcheck_inputs()))
def test_opcheck(args):
    torch.library.opcheck(select_prefixes, args)


def test_compiles_in_a_graph():
    def step(probs, rows, lengths, budget):
        select_prefixes(probs, rows, lengths, budget)
        return lengths + 1

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    probs = torch.rand(6, 4)
    lengths, expected = torch.full((6,), 4), torch.full((6,), 4)
    select_prefixes(probs, torch.arange(6), expected, 7)
    assert torch.equal(compiled(probs, torch.arange(6), lengths, 7), expected + 1)
    assert torch.equal(lengths, expected)


# Bad inputs: the op and the fake raise the same error, naming the argument, and write nothing.

P, ROWS, L = torch.rand(3, 4), torch.tensor([0, 1]), torch.tensor([4, 4], dtype=torch.int32)
BAD = [
    ((P.double(), ROWS, L, 1), TypeError, "argument 'probs': expected dtype Float, got Double"),
    ((P.half(), ROWS, L, 1), TypeError, "argument 'probs': expected dtype Float"),
    ((P[0], ROWS, L, 1), ValueError, r"argument 'probs': expected a 2-D tensor \[R, S\], got shape \[4\]"),
    ((P, ROWS.float(), L, 1), TypeError, "argument 'rows': expected dtype Int or Long, got Float"),
    ((P, ROWS[None], L, 1), ValueError, r"argument 'rows': expected a 1-D tensor \[B\]"),
    ((P, ROWS, L.float(), 1), TypeError, "argument 'lengths': expected dtype Int or Long, got Float"),
    ((P, ROWS, L[None], 1), ValueError, r"argument 'lengths': expected a 1-D tensor \[B\]"),
    (
        (P, ROWS, L[:1], 1),
        ValueError,
        r"argument 'lengths': expected size 2 \(B, the size of 'rows'\) at dim 0",
    ),
    ((P, ROWS, L, -1), ValueError, "argument 'budget': expected an integer >= 0, got -1"),
]


@pytest.mark.parametrize("args, error, match", BAD)
def test_bad_inputs(backend, args, error, match):
    on_device = [same_layout_on(a, backend.device) if isinstance(a, torch.Tensor) else a for a in args]
    with pytest.raises(error, match="select_prefixes: " + match):
        backend.op("select_prefixes")(*on_device)
    assert torch.equal(on_device[2].cpu(), args[2])


@pytest.mark.parametrize("args, error, match", BAD)
def test_fake_rejects_the_same_inputs(args, error, match):
    with FakeTensorMode() as mode:
        fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        with pytest.raises(error, match="select_prefixes: " + match):
            select_prefixes(*fake_args)


def test_lengths_must_not_overlap():
    with pytest.raises(ValueError, match="argument 'lengths': expected a tensor without overlapping"):
        select_prefixes(P, ROWS, torch.tensor([4], dtype=torch.int32).expand(2), 1)
    shared = torch.tensor([0, 1, 4, 4], dtype=torch.int32)
    with pytest.raises(ValueError, match="argument 'lengths': expected memory apart from 'rows'"):
        select_prefixes(P, shared[:2], shared[:2], 1)


def test_tensors_on_another_device(backend):
    """The backend's kernel itself (not the fake implementation) names the argument."""
    device = torch.device(backend.device).type
    for arg in ["rows", "lengths"]:
        inputs = dict(probs=P, rows=ROWS, lengths=L.clone())
        mixed = {
            k: same_layout_on(v, backend.other_device if k == arg else backend.device)
            for k, v in inputs.items()
        }
        with pytest.raises(ValueError, match=f"argument '{arg}': expected a tensor on {device}"):
            backend.kernel("select_prefixes")(**mixed, budget=1)


def test_wrapper():
    lengths = L.clone()
    assert tetris_ext.ops.select_prefixes(P, ROWS, lengths, 3) is None
    expected = L.clone()
    select_prefixes(P, ROWS, expected, 3)
    assert torch.equal(lengths, expected)


# -- the kernel against the CPU op --------------------------------------------------------------


def assert_kernel_matches_cpu(backend, probs, rows, lengths, budget):
    expected = lengths.clone()
    select_prefixes(probs, rows, expected, budget)
    actual = run_on(backend, probs, rows, lengths, budget)
    assert torch.equal(actual, expected), f"{actual} != {expected}"


@settings(max_examples=300, deadline=None)
@given(select_prefixes_inputs())
def test_kernel_matches_cpu(kernel_backend, kw):
    assert_kernel_matches_cpu(kernel_backend, kw["probs"], kw["rows"], kw["lengths"], kw["budget"])


def block_inputs(B, S, style, seed, budget=None):
    g = torch.Generator().manual_seed(seed)
    probs = random_probs(g, B + 5, S, style)
    rows = torch.randperm(B + 5, generator=g)[:B]
    lengths = torch.randint(0, S + 2, (B,), generator=g, dtype=torch.int32)
    return probs, rows, lengths, (B * S) // 3 + 1 if budget is None else budget


# B around the warp, the 1024-thread block (requests per thread > 1 beyond it), and B * S past
# what shared memory holds (the kernel's global-workspace path, from 54,016 positions on).
@pytest.mark.parametrize(
    "B, S",
    [(1, 8), (31, 8), (33, 3), (256, 8), (1023, 8), (1024, 8), (1025, 8), (3000, 5), (7000, 8), (8192, 8)],
)
@pytest.mark.parametrize("style", ["ties", "continuous", "specials"])
def test_kernel_block_boundaries(kernel_backend, B, S, style):
    assert_kernel_matches_cpu(kernel_backend, *block_inputs(B, S, style, seed=B + S))


def test_kernel_budget_extremes(kernel_backend):
    for budget in [0, 1, 299, 300, 301, 10**9]:
        assert_kernel_matches_cpu(
            kernel_backend, *block_inputs(50, 6, "ties", seed=budget % 97, budget=budget)
        )


# 65536 requests: too many for the emulator.
@pytest.mark.parametrize("style", ["ties", "continuous", "specials"])
def test_cuda_large(cuda, style):
    assert_kernel_matches_cpu(cuda, *block_inputs(65536, 16, style, seed=65536 + 16))


# Threads in the opposite order (the harness's reverse schedule) give the same answer.
@pytest.mark.parametrize("B, S", [(5, 7), (256, 8), (2100, 4)])
def test_emulated_reverse_thread_order(emulated, monkeypatch, B, S):
    monkeypatch.setenv("TETRIS_EMU_SCHEDULE", "reverse")
    assert_kernel_matches_cpu(emulated, *block_inputs(B, S, "ties", seed=S))
