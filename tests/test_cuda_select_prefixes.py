"""The select_prefixes CUDA kernel on a real GPU against the CPU op (skipped without one).

Lengths identical to the CPU op's on the op tests' random inputs and at block boundaries; bad
arguments raise as on the CPU; one kernel launch, on the current stream, without a host
synchronisation (sync debug mode "error"), replayed from a CUDA graph after its inputs change in
place (capture-safe), deterministic.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings

import tetris_ext  # noqa: F401
from refs.select_prefixes import random_probs, select_prefixes_inputs
from test_select_prefixes import BAD

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

op = torch.ops.tetris.select_prefixes.default


def on_cuda(t):
    """t on the GPU with the same strides (layouts matter to the kernel)."""
    out = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cuda")
    return out.copy_(t)


def assert_matches_cpu(probs, rows, lengths, budget):
    expected = lengths.clone()
    op(probs, rows, expected, budget)
    actual = on_cuda(lengths)
    op(on_cuda(probs), on_cuda(rows), actual, budget)
    assert torch.equal(actual.cpu(), expected)


@settings(max_examples=300, deadline=None)
@given(select_prefixes_inputs())
def test_matches_cpu(kw):
    assert_matches_cpu(kw["probs"], kw["rows"], kw["lengths"], kw["budget"])


def inputs(B, S, style, seed):
    g = torch.Generator().manual_seed(seed)
    probs = random_probs(g, B + 5, S, style)
    rows = torch.randperm(B + 5, generator=g)[:B]
    lengths = torch.randint(0, S + 2, (B,), generator=g, dtype=torch.int32)
    return probs, rows, lengths, (B * S) // 3 + 1


@pytest.mark.parametrize("B, S", [(1, 8), (33, 3), (256, 8), (1024, 8), (1025, 8), (8192, 8), (65536, 16)])
@pytest.mark.parametrize("style", ["ties", "continuous", "specials"])
def test_block_boundaries(B, S, style):
    assert_matches_cpu(*inputs(B, S, style, seed=B + S))


@pytest.mark.parametrize("args, error, match", BAD)
def test_bad_arguments_raise_as_on_cpu(args, error, match):
    with pytest.raises(error, match=match):
        op(*[on_cuda(a) if isinstance(a, torch.Tensor) else a for a in args])


def test_graph_replay_follows_inputs_without_sync():
    probs, rows, lengths, budget = (on_cuda(t) if isinstance(t, torch.Tensor) else t
                                    for t in inputs(256, 8, "continuous", seed=1))
    caps = lengths.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture
        op(probs, rows, lengths, budget)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.cuda.graph(graph):
            op(probs, rows, lengths, budget)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for seed in range(3):
        new_probs, _, new_caps, _ = inputs(256, 8, "ties", seed=seed + 10)
        probs.copy_(new_probs)
        caps.copy_(new_caps)
        lengths.copy_(caps)
        graph.replay()
        expected = new_caps.clone()
        op(new_probs, rows.cpu(), expected, budget)
        assert torch.equal(lengths.cpu(), expected)


def test_one_launch_on_the_current_stream_deterministic():
    probs, rows, lengths, budget = (on_cuda(t) if isinstance(t, torch.Tensor) else t
                                    for t in inputs(1024, 8, "ties", seed=2))
    caps = lengths.clone()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream), torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        op(probs, rows, lengths, budget)
    stream.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and "select_prefixes" in e.name]
    assert len(kernels) == 1, [e.name for e in prof.events()]
    for _ in range(3):
        again = caps.clone()
        op(probs, rows, again, budget)
        assert torch.equal(again, lengths)
