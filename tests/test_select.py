"""tetris::select: the TETRIS walk, its optimality, edge cases and argument checks on every
backend (the `backend` fixture, tests/conftest.py), and the kernels against the CPU op on random
and block-boundary inputs (`kernel_backend`: outputs bit-identical, ties included)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import tetris_ext  # noqa: F401  (registers torch.ops.tetris)
from refs.backends import CPU, assert_matches_cpu
from refs.blocks import SELECT_BENCH_SHAPES, SELECT_BLOCK_SHAPES, select_block_inputs
from refs.draft_cumprod import parent_matrix, random_parents
from refs.layouts import LAYOUTS, with_layout
from refs.select import (
    effective_scores,
    eligible_candidates,
    float32,
    random_scores,
    select_inputs,
    select_ref,
    select_walk,
)


def run(kw, backend=CPU):
    args = (kw["scores"], kw["budget"], kw["parents"], kw["max_per_request"], kw["min_score"])
    return backend.run("select", *args)


def assert_same(actual, expected):
    assert torch.equal(actual[0], expected[0]), f"selected\n{actual[0]}\n!=\n{expected[0]}"
    assert torch.equal(actual[1], expected[1]), f"counts {actual[1]} != {expected[1]}"
    assert actual[0].dtype == torch.bool and actual[1].dtype == torch.int32


@settings(max_examples=400, deadline=None)
@given(select_inputs())
def test_matches_the_walk(backend, kw):
    assert_same(run(kw, backend), select_ref(**kw))


def ranked_formulation(scores, budget, parents=None, max_per_request=None, min_score=None):
    """The equivalent, ranked statement of select (docs/ops.md, "Why this order"): keep the
    candidates whose rank inside their request (e desc, n asc) is below the cap, then the first
    `budget` kept in (e desc, b asc, n asc)."""
    B, N = scores.shape
    e = effective_scores(scores, parents)
    caps = [N] * B if max_per_request is None else [max(int(c), 0) for c in max_per_request.tolist()]
    by_request = [[] for _ in range(B)]
    for b, n in eligible_candidates(e, min_score):
        by_request[b].append((b, n))
    kept = []
    for b, mine in enumerate(by_request):
        kept += sorted(mine, key=lambda c: (-e[b][c[1]], c[1]))[: caps[b]]
    kept.sort(key=lambda c: (-e[c[0]][c[1]], c[0], c[1]))
    selected = torch.zeros(B, N, dtype=torch.bool)
    for b, n in kept[:budget]:
        selected[b, n] = True
    return selected, selected.sum(1, dtype=torch.int32)


@settings(max_examples=200, deadline=None)
@given(select_inputs())
def test_matches_the_ranked_formulation(kw):
    assert_same(run(kw), ranked_formulation(**kw))


def feasible(selected, kw, e) -> bool:
    """Ancestor-closed, eligible only, within the budget and every cap."""
    B, N = selected.shape
    parents = parent_matrix(kw["parents"], B, N).tolist()
    eligible = set(eligible_candidates(e, kw["min_score"]))
    caps = kw["max_per_request"]
    chosen = {(b, n) for b, n in selected.nonzero().tolist()}
    if len(chosen) > kw["budget"] or not chosen <= eligible:
        return False
    for b in range(B):
        cap = N if caps is None else max(int(caps[b]), 0)
        if sum(1 for c in chosen if c[0] == b) > cap:
            return False
    return all(parents[b][n] == -1 or (b, parents[b][n]) in chosen for b, n in chosen)


def best_by_brute_force(kw, e) -> float:
    """max over all feasible selections of sum(exp(e))."""
    B, N = kw["scores"].shape
    candidates = eligible_candidates(e, kw["min_score"])
    best = 0.0
    for mask in range(1 << len(candidates)):
        selected = torch.zeros(B, N, dtype=torch.bool)
        for i, (b, n) in enumerate(candidates):
            if mask >> i & 1:
                selected[b, n] = True
        if feasible(selected, kw, e):
            best = max(best, sum(math.exp(e[b][n]) for b, n in selected.nonzero().tolist()))
    return best


@settings(max_examples=120, deadline=None)
@given(select_inputs(max_batch=3, max_candidates=4))
def test_optimal_among_ancestor_closed_selections(kw):
    assume(not torch.isposinf(kw["scores"]).any())  # exp(+inf) makes every sum with it equal
    e = effective_scores(kw["scores"], kw["parents"])
    selected, counts = run(kw)
    assert feasible(selected, kw, e)
    assert torch.equal(counts, selected.sum(1, dtype=torch.int32))
    value = sum(math.exp(e[b][n]) for b, n in selected.nonzero().tolist())
    assert value >= best_by_brute_force(kw, e) * (1 - 1e-12)


def test_ties_go_to_the_lowest_request_then_candidate(backend):
    # Every score ties: the walk takes requests in order, each chain from its root.
    scores = torch.zeros(3, 4)
    selected, counts = backend.run("select", scores, 6, None, None, None)
    assert counts.tolist() == [4, 2, 0]
    assert selected[1].tolist() == [True, True, False, False]
    # -0.0 ties with 0.0; the tie breaks on b, not on the sign bit.
    scores = torch.tensor([[-0.0], [0.0]])
    assert backend.run("select", scores, 1, None, None, None)[0].flatten().tolist() == [True, False]


def test_ties_never_break_the_budget_or_closure(backend):
    # torch.topk may return any of the tied candidates; select takes exactly `budget`, parents first.
    scores = torch.full((8, 16), -1.0)
    parents = torch.tensor([-1, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7]).expand(8, 16)
    for budget in range(0, 129, 7):
        selected, counts = backend.run("select", scores, budget, parents, None, None)
        assert int(counts.sum()) == budget
        order = [(b, n) for b in range(8) for n in range(16)]
        assert selected.flatten().tolist() == [i < budget for i in range(len(order))]


def test_walk_order_is_reproduced_candidate_by_candidate():
    # Growing the budget one at a time adds exactly the next candidate of the walk.
    g = torch.Generator().manual_seed(3)
    scores = random_scores(g, 6, 9, "ties", 0.1)
    parents = random_parents(g, 6, 9, 0.1)
    caps = torch.tensor([0, 1, 9, 4, -1, 3])
    walk = select_walk(scores, 6 * 9, parents, caps, -1.5)
    previous = torch.zeros(6, 9, dtype=torch.bool)
    for budget in range(1, len(walk) + 2):
        selected, _ = CPU.run("select", scores, budget, parents, caps, -1.5)
        added = (selected & ~previous).nonzero().tolist()
        assert added == ([list(walk[budget - 1])] if budget <= len(walk) else [])
        previous = selected


@pytest.mark.parametrize("style", ["paths", "ties", "any"])
@pytest.mark.parametrize("tree", [False, True])
def test_large_batches(style, tree):
    # Exercises the radix cut with thousands of candidates per digit bucket.
    g = torch.Generator().manual_seed(7)
    B, N = 300, 24
    scores = random_scores(g, B, N, style, 0.02)
    parents = random_parents(g, B, N, 0.01) if tree else None
    caps = torch.randint(-1, N + 1, (B,), generator=g)
    for budget in [0, 1, 777, 2048, 4000, B * N, B * N + 5]:
        for cap in [None, caps]:
            kw = dict(scores=scores, budget=budget, parents=parents, max_per_request=cap, min_score=None)
            assert_same(run(kw), ranked_formulation(**kw))


@pytest.mark.parametrize("N", [1, 2, 3, 16, 17, 32])
@pytest.mark.parametrize("style", ["paths", "any"])
def test_chains_of_every_width(N, style):
    # The CPU op takes the running minima of chains in flat doubling passes when N is a power of
    # two and one request at a time otherwise: both, with NaN / -inf mid-chain, caps, min_score.
    g = torch.Generator().manual_seed(N)
    B = 96
    scores = random_scores(g, B, N, style, 0.03)
    caps = torch.randint(-1, N + 1, (B,), generator=g)
    for budget in [1, B * N // 2, B * N]:
        for cap in [None, caps]:
            for min_score in [None, -1.5]:
                kw = dict(
                    scores=scores, budget=budget, parents=None, max_per_request=cap, min_score=min_score
                )
                assert_same(run(kw), ranked_formulation(**kw))


def test_keys_that_differ_in_the_lowest_bits():
    # Neighbouring floats share the first two radix digits; many of them tie exactly.
    base = torch.tensor(-3.0)
    values = [base]
    for _ in range(40):
        values.append(torch.nextafter(values[-1], torch.tensor(-4.0)))
    pool = torch.stack(values)
    g = torch.Generator().manual_seed(11)
    scores = pool[torch.randint(0, len(pool), (64, 32), generator=g)]
    parents = torch.full((64, 32), -1)  # every candidate hangs at the root
    for budget in [1, 100, 1000, 2047]:
        kw = dict(scores=scores, budget=budget, parents=parents, max_per_request=None, min_score=None)
        assert_same(run(kw), ranked_formulation(**kw))


def test_budget_zero_and_above_the_candidates(backend):
    scores = torch.tensor([[-0.1, -0.2, float("nan")], [-0.3, float("-inf"), -0.4]])
    selected, counts = backend.run("select", scores, 0, None, None, None)
    assert not selected.any() and counts.tolist() == [0, 0]
    selected, counts = backend.run("select", scores, 100, None, None, None)
    assert selected.tolist() == [[True, True, False], [True, False, False]]
    assert counts.tolist() == [2, 1]


def test_caps_and_min_score(backend):
    scores = torch.tensor([[-0.1, -0.2, -0.3], [-0.15, -0.25, -0.35]])
    caps = torch.tensor([1, -5])  # negative means 0
    selected, counts = backend.run("select", scores, 5, None, caps, None)
    assert selected.tolist() == [[True, False, False], [False, False, False]]
    selected, counts = backend.run("select", scores, 5, None, None, -0.25)
    assert counts.tolist() == [2, 2]
    # min_score is rounded to float32 first, like comparing a float32 tensor with a number.
    threshold = float32(-0.25) - 1e-12
    assert backend.run("select", scores, 5, None, None, threshold)[1].tolist() == [2, 2]


@pytest.mark.parametrize("shape", [(0, 5), (4, 0), (0, 0)])
def test_empty(backend, shape):
    scores = torch.zeros(shape)
    parents = torch.zeros(shape, dtype=torch.int64)
    caps = torch.zeros(shape[0], dtype=torch.int32)
    selected, counts = backend.run("select", scores, 3, parents, caps, 0.0)
    assert selected.shape == shape and selected.dtype == torch.bool
    assert counts.shape == (shape[0],) and counts.dtype == torch.int32
    assert not counts.any()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_any_layout_same_result(backend, layout):
    g = torch.Generator().manual_seed(5)
    scores = random_scores(g, 7, 9, "ties", 0.1)
    parents = random_parents(g, 7, 9, 0.1)
    caps = torch.randint(-1, 10, (7,), generator=g)
    expected = CPU.run("select", scores, 20, parents, caps, -2.0)
    actual = backend.run(
        "select",
        with_layout(scores, layout),
        20,
        with_layout(parents, layout),
        with_layout(caps, layout),
        -2.0,
    )
    assert_same(actual, expected)


def test_deterministic(backend):
    g = torch.Generator().manual_seed(9)
    scores = random_scores(g, 64, 16, "ties", 0.05)
    first = backend.run("select", scores, 300, None, None, None)
    for _ in range(5):
        assert_same(backend.run("select", scores, 300, None, None, None), first)


def opcheck_inputs():
    g = torch.Generator().manual_seed(13)
    yield (random_scores(g, 4, 6, "paths", 0.0), 9, None, None, None)
    yield (
        random_scores(g, 4, 6, "ties", 0.1),
        5,
        random_parents(g, 4, 6, 0.1),
        torch.tensor([1, 2, 0, 9]),
        -1.0,
    )
    yield (random_scores(g, 3, 5, "any", 0.2), 0, random_parents(g, 3, 5, 0.0).int(), None, None)
    yield (torch.zeros(0, 4), 2, None, torch.zeros(0, dtype=torch.int64), None)


@pytest.mark.parametrize("args", list(opcheck_inputs()))
def test_opcheck(args):
    torch.library.opcheck(torch.ops.tetris.select.default, args)


# Bad inputs: every check raises, naming the argument.

S = torch.zeros(2, 3)


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((S.double(), 1, None, None, None), TypeError, "argument 'scores': expected dtype Float"),
        ((S.half(), 1, None, None, None), TypeError, "argument 'scores'"),
        ((torch.zeros(6), 1, None, None, None), ValueError, "argument 'scores': expected a 2-D"),
        ((torch.zeros(1, 2, 3), 1, None, None, None), ValueError, "argument 'scores'"),
        ((S, -1, None, None, None), ValueError, "argument 'budget': expected an integer >= 0"),
        ((S, 1, S, None, None), TypeError, "argument 'parents': expected dtype Int or Long"),
        ((S, 1, torch.zeros(2, 4, dtype=torch.long), None, None), ValueError, "argument 'parents'.*N"),
        ((S, 1, torch.zeros(3, 3, dtype=torch.long), None, None), ValueError, "argument 'parents'.*B"),
        ((S, 1, torch.zeros(6, dtype=torch.long), None, None), ValueError, "argument 'parents'.*2-D"),
        ((S, 1, None, torch.zeros(2), None), TypeError, "argument 'max_per_request'.*Int or Long"),
        ((S, 1, None, torch.zeros(3, dtype=torch.int32), None), ValueError, "argument 'max_per_request'.*B"),
        (
            (S, 1, None, torch.zeros(2, 1, dtype=torch.int32), None),
            ValueError,
            "argument 'max_per_request'.*1-D",
        ),
        ((S, 1, None, None, float("nan")), ValueError, "argument 'min_score'.*NaN"),
    ],
)
def test_bad_inputs(backend, args, error, match):
    with pytest.raises(error, match=match):
        backend.run("select", *args)


# A tensor on another device: tests/test_kernel_backends.py (every op, every backend).


@given(st.integers(0, 5), st.integers(0, 5))
@settings(max_examples=10, deadline=None)
def test_counts_match_selected(backend, B, N):
    g = torch.Generator().manual_seed(B * 7 + N)
    scores = random_scores(g, B, N, "any", 0.1)
    selected, counts = backend.run("select", scores, B * N // 2, None, None, None)
    assert torch.equal(counts, selected.sum(1, dtype=torch.int32))


# -- the kernels against the CPU op (on random inputs: tests/test_kernel_backends.py) ------------


# B, N and B * N around warp, 256 and block boundaries (tests/refs/blocks.py), with budgets
# that cut through ties ("ties" scores have 7 distinct values).
@pytest.mark.parametrize("B, N", SELECT_BLOCK_SHAPES)
@pytest.mark.parametrize("style", ["ties", "paths"])
@pytest.mark.parametrize("tree, caps", [(False, False), (True, False), (True, True), (False, True)])
def test_kernel_block_boundaries(kernel_backend, B, N, style, tree, caps):
    inputs = select_block_inputs(B, N, (B * N) // 3 + 1, style=style, tree=tree, caps=caps, seed=B + N)
    assert_matches_cpu(kernel_backend, "select", inputs)


# The bench's largest shapes (from B * N = 32768 on, the kernel's global-memory path).
@pytest.mark.parametrize("N, budget", SELECT_BENCH_SHAPES)
@pytest.mark.parametrize("style", ["ties", "paths"])
def test_kernel_bench_shapes(kernel_backend, N, budget, style):
    inputs = select_block_inputs(1024, N, budget, style=style, caps=True, min_score=-40.0)
    assert_matches_cpu(kernel_backend, "select", inputs)


def test_kernel_budget_extremes(kernel_backend):
    for budget in [0, 1, 299, 300, 301, 10**9]:
        assert_matches_cpu(
            kernel_backend, "select", select_block_inputs(10, 30, budget, style="ties", caps=True)
        )


# B * N up to 2^18 (the global-memory path, many blocks of keys): too large for the emulator.
@pytest.mark.parametrize("B, N, budget", [(4096, 64, 100000), (16384, 16, 5000)])
@pytest.mark.parametrize("style", ["ties", "paths"])
def test_cuda_large(cuda, B, N, budget, style):
    assert_matches_cpu(
        cuda, "select", select_block_inputs(B, N, budget, style=style, caps=True, min_score=-40.0)
    )


# Threads in the opposite order (the harness's reverse schedule) give the same answer.
@pytest.mark.parametrize("B, N, budget", [(5, 7, 9), (64, 33, 700), (1024, 16, 2048)])
def test_emulated_reverse_thread_order(emulated, monkeypatch, B, N, budget):
    monkeypatch.setenv("TETRIS_EMU_SCHEDULE", "reverse")
    assert_matches_cpu(emulated, "select", select_block_inputs(B, N, budget, style="ties", caps=True, seed=N))
