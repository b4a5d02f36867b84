"""The CUDA kernels (torch.ops.tetris.* on cuda tensors) against the CPU ops, on a real GPU
(issue 3, "On a real GPU"; `make test-gpu`, docs/gpu.md).

Skipped where no CUDA device is present (this machine, CI). Where one is, the library must
have been built with CUDA, and every op is checked on the inputs the emulation tests use
(tests/refs strategies and block-boundary shapes, tests/refs/blocks.py) plus shapes too
large for the emulator: integer and boolean outputs bit-identical, float outputs within 1e-5;
bad arguments raise as on the CPU, an argument on another device raises with its name; the
ops run on the current stream, replay correctly from a CUDA graph after their inputs change
in place (capture-safe: no sync, no value-dependent allocation), B = 0 / N = 0 included, make
no host synchronisation (torch.cuda.set_sync_debug_mode("error") around the call), and give
the same bits twice. The comparison helpers are in tests/refs/backends.py and run on
the emulated kernels in CI (tests/test_backend_checks.py), so they are known to be able to fail.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings

import tetris_ext
from refs.backends import (
    BAD_ARGUMENTS, CPU, CUDA, OPS, OTHER_DEVICE_ARGUMENTS, assert_deterministic, assert_matches_cpu,
    assert_outputs_match, assert_rejects_like_cpu, assert_rejects_other_device,
    assert_replay_follows_inputs, bad_inputs, empty_batch, no_candidates, small_inputs, to_device,
    write_in_place,
)
from refs.blocks import (
    DRAFT_CUMPROD_BATCH_SHAPES, DRAFT_CUMPROD_VOCABS, GREEDY_SLOTS, SAMPLING_VOCABS,
    SELECT_BENCH_SHAPES, SELECT_BLOCK_SHAPES, TREE_MASK_BATCHES, TREE_MASK_CANDIDATES,
    draft_cumprod_block_inputs, greedy_block_inputs, sampling_block_inputs, select_block_inputs,
    tree_mask_block_inputs,
)
from refs.draft_cumprod import draft_cumprod_inputs
from refs.select import select_inputs
from refs.tree_mask import noncontiguous, tree_mask_inputs
from refs.verify import verify_greedy_inputs, verify_sampling_inputs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

TREE_MASK_OPS = ["tree_mask", "tree_mask_packed"]


def test_library_has_the_cuda_kernels():
    assert tetris_ext.BUILT_WITH_CUDA, "a GPU is present but the library was built without CUDA (TETRIS_CUDA=on)"
    for name in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"tetris::{name}", "CUDA"), name


# -- the op tests' random inputs ------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(draft_cumprod_inputs())
def test_draft_cumprod_matches_cpu(inputs):
    assert_matches_cpu(CUDA, "draft_cumprod", inputs)


@settings(max_examples=40, deadline=None)
@given(draft_cumprod_inputs(max_batch=40, max_candidates=40))
def test_draft_cumprod_matches_cpu_larger(inputs):
    assert_matches_cpu(CUDA, "draft_cumprod", inputs)


@settings(max_examples=300, deadline=None)
@given(select_inputs())
def test_select_matches_cpu(inputs):
    assert_matches_cpu(CUDA, "select", inputs)


@settings(max_examples=60, deadline=None)
@given(select_inputs(max_batch=70, max_candidates=40))
def test_select_matches_cpu_larger(inputs):
    assert_matches_cpu(CUDA, "select", inputs)


@pytest.mark.parametrize("name", TREE_MASK_OPS)
@settings(max_examples=150, deadline=None)
@given(inputs=tree_mask_inputs())
def test_tree_mask_matches_cpu(name, inputs):
    assert_matches_cpu(CUDA, name, inputs)
    assert_matches_cpu(CUDA, name, {k: None if v is None else noncontiguous(v) for k, v in inputs.items()})


@settings(max_examples=200, deadline=None)
@given(verify_greedy_inputs())
def test_verify_greedy_matches_cpu(inputs):
    assert_matches_cpu(CUDA, "verify_greedy", inputs)
    assert_matches_cpu(CUDA, "verify_greedy", {k: noncontiguous(v) for k, v in inputs.items()})


# Dyadic probabilities: every sum is exact, so the kernel's summation order gives the CPU's bits.
@settings(max_examples=200, deadline=None)
@given(verify_sampling_inputs(dyadic=True))
def test_verify_sampling_matches_cpu(inputs):
    assert_matches_cpu(CUDA, "verify_sampling", inputs)
    assert_matches_cpu(CUDA, "verify_sampling", {k: None if v is None else noncontiguous(v) for k, v in inputs.items()})


# -- block-boundary shapes (as the emulation tests) and shapes too large for the emulator ----------

HALF_TYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", HALF_TYPES)
@pytest.mark.parametrize("V", DRAFT_CUMPROD_VOCABS)
def test_draft_cumprod_vocabulary_sizes(dtype, V):
    assert_matches_cpu(CUDA, "draft_cumprod", draft_cumprod_block_inputs(2, 3, V, dtype, seed=V))


@pytest.mark.parametrize("dtype", HALF_TYPES)
@pytest.mark.parametrize("offset", range(8))
def test_draft_cumprod_misaligned_rows(dtype, offset):
    inputs = draft_cumprod_block_inputs(2, 3, 300, dtype, seed=offset)
    wide = torch.randn(2, 3, 300 + offset + 5).to(dtype)
    wide[..., offset : offset + 300] = inputs["logits"]
    assert_matches_cpu(CUDA, "draft_cumprod", {**inputs, "logits": wide[..., offset : offset + 300]})


@pytest.mark.parametrize("B, N", DRAFT_CUMPROD_BATCH_SHAPES)
@pytest.mark.parametrize("tree", [False, True])
def test_draft_cumprod_batch_shapes(B, N, tree):
    assert_matches_cpu(CUDA, "draft_cumprod", draft_cumprod_block_inputs(B, N, 6, tree=tree, seed=B * N))


# The bench shape, and B * N * V above 10^8 (the bandwidth target's regime), V of a 128k vocabulary.
@pytest.mark.parametrize("B, N, V, dtype", [(64, 8, 32000, torch.float32), (64, 8, 32000, torch.bfloat16),
                                            (256, 16, 32000, torch.bfloat16), (16, 8, 128256, torch.float16)])
def test_draft_cumprod_large(B, N, V, dtype):
    inputs = draft_cumprod_block_inputs(B, N, V, dtype, seed=V, specials=False, invalid_rate=0.02)
    assert_matches_cpu(CUDA, "draft_cumprod", inputs)


@pytest.mark.parametrize("B, N", SELECT_BLOCK_SHAPES)
@pytest.mark.parametrize("style", ["ties", "paths"])
@pytest.mark.parametrize("tree, caps", [(False, False), (True, False), (True, True), (False, True)])
def test_select_block_boundaries(B, N, style, tree, caps):
    inputs = select_block_inputs(B, N, (B * N) // 3 + 1, style=style, tree=tree, caps=caps, seed=B + N)
    assert_matches_cpu(CUDA, "select", inputs)


# The bench's largest shapes, and B * N up to 2^18 (the global-memory path, many blocks of keys).
@pytest.mark.parametrize("B, N, budget", [(1024, N, budget) for N, budget in SELECT_BENCH_SHAPES]
                         + [(4096, 64, 100000), (16384, 16, 5000)])
@pytest.mark.parametrize("style", ["ties", "paths"])
def test_select_large(B, N, budget, style):
    assert_matches_cpu(CUDA, "select", select_block_inputs(B, N, budget, style=style, caps=True, min_score=-40.0))


def test_select_budget_extremes():
    for budget in [0, 1, 299, 300, 301, 10**9]:
        assert_matches_cpu(CUDA, "select", select_block_inputs(10, 30, budget, style="ties", caps=True))


@pytest.mark.parametrize("name", TREE_MASK_OPS)
@pytest.mark.parametrize("N", TREE_MASK_CANDIDATES)
@pytest.mark.parametrize("kind", ["tree", "chain", "star"])
def test_tree_mask_block_boundaries(name, N, kind):
    closed = tree_mask_block_inputs(2, N, seed=N, kind=kind, orphans=False, invalid=False)
    closed["selected"][1] = True
    assert_matches_cpu(CUDA, name, closed)
    assert_matches_cpu(CUDA, name, tree_mask_block_inputs(2, N, seed=N + 1, kind=kind))


@pytest.mark.parametrize("name", TREE_MASK_OPS)
@pytest.mark.parametrize("B", TREE_MASK_BATCHES)
def test_tree_mask_batch_boundaries(name, B):
    assert_matches_cpu(CUDA, name, tree_mask_block_inputs(B, 5, seed=B))


@pytest.mark.parametrize("name", TREE_MASK_OPS)
@pytest.mark.parametrize("B, N", [(2, 1024), (64, 1024), (4096, 16)])
def test_tree_mask_large(name, B, N):
    assert_matches_cpu(CUDA, name, tree_mask_block_inputs(B, N, seed=B, orphans=False))


@pytest.mark.parametrize("M", GREEDY_SLOTS)
def test_verify_greedy_block_boundaries(M):
    assert_matches_cpu(CUDA, "verify_greedy", greedy_block_inputs(3, M, seed=M))


@pytest.mark.parametrize("B", [33, 1025, 4096])
def test_verify_greedy_many_requests(B):
    assert_matches_cpu(CUDA, "verify_greedy", greedy_block_inputs(B, 9, seed=B))


@pytest.mark.parametrize("V", SAMPLING_VOCABS)
@pytest.mark.parametrize("draft", [False, True])
def test_verify_sampling_vocabulary_boundaries(V, draft):
    assert_matches_cpu(CUDA, "verify_sampling", sampling_block_inputs(3, 9, V, seed=V, draft=draft))
    assert_matches_cpu(CUDA, "verify_sampling", sampling_block_inputs(2, 9, V, seed=V + 1, draft=draft, normalised=False))
    assert_matches_cpu(CUDA, "verify_sampling", sampling_block_inputs(3, 9, V, seed=V + 2, draft=draft, support=6))


@pytest.mark.parametrize("B, M, V", [(4, 17, 32000), (8, 17, 128256), (64, 9, 32000)])
@pytest.mark.parametrize("draft", [False, True])
def test_verify_sampling_large(B, M, V, draft):
    assert_matches_cpu(CUDA, "verify_sampling", sampling_block_inputs(B, M, V, seed=B, draft=draft, support=8))


@pytest.mark.parametrize("name", OPS)
def test_outputs_are_fully_written(poisoned_empty, name):
    assert_matches_cpu(CUDA, name, small_inputs(name))


# -- bad arguments -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, arg, spoil", BAD_ARGUMENTS, ids=lambda x: x if isinstance(x, str) else "")
def test_bad_arguments_raise_as_on_cpu(name, arg, spoil):
    assert_rejects_like_cpu(CUDA, name, bad_inputs(name, arg, spoil))


@pytest.mark.parametrize("name, arg", OTHER_DEVICE_ARGUMENTS)
def test_argument_on_the_cpu_is_named(name, arg):
    assert_rejects_other_device(CUDA, name, small_inputs(name), arg, "cpu")


@pytest.mark.parametrize("name", OPS)
def test_first_argument_on_the_cpu_raises(name):
    """The others on cuda: the dispatcher still picks the CUDA kernel, whose checks name the
    first argument that is not on the first one's device."""
    inputs = to_device(small_inputs(name), "cuda")
    first = next(k for k, v in inputs.items() if isinstance(v, torch.Tensor))
    inputs[first] = inputs[first].cpu()
    with pytest.raises(ValueError, match=rf"{name}: argument '\w+': expected a tensor on cpu \(the device of '{first}'\)"):
        getattr(torch.ops.tetris, name)(**inputs)


# -- streams, CUDA graphs, determinism ---------------------------------------------------------------


def case(name, build, label):
    """An op and a builder of its inputs from a seed (same shapes for every seed)."""
    return pytest.param(name, build, id=f"{name}-{label}")


CASES = [
    case("draft_cumprod", lambda seed: draft_cumprod_block_inputs(3, 5, 37, seed=seed), "small-tree"),
    case("draft_cumprod", lambda seed: draft_cumprod_block_inputs(
        64, 8, 32000, torch.bfloat16, tree=False, seed=seed, specials=False, invalid_rate=0.02), "bench-chains-bf16"),
    case("select", lambda seed: select_block_inputs(64, 33, 700, style="ties", caps=True, seed=seed), "ties-caps"),
    case("select", lambda seed: select_block_inputs(256, 16, 2048, tree=False, seed=seed), "chains-shared-memory"),
    case("select", lambda seed: select_block_inputs(1024, 64, 8192, caps=True, min_score=-40.0, seed=seed),
         "global-workspace"),
    *[case(name, lambda seed: tree_mask_block_inputs(40, 70, seed=seed), "trees") for name in TREE_MASK_OPS],
    *[case(name, lambda seed: tree_mask_block_inputs(1025, 5, seed=seed, kind="chain"), "many-chains")
      for name in TREE_MASK_OPS],
    case("verify_greedy", lambda seed: greedy_block_inputs(33, 40, seed=seed), "many-requests"),
    case("verify_greedy", lambda seed: greedy_block_inputs(3, 1025, seed=seed), "large-blocks"),
    case("verify_sampling", lambda seed: sampling_block_inputs(4, 17, 32000, seed=seed, draft=True, support=8),
         "bench-draft"),
    case("verify_sampling", lambda seed: sampling_block_inputs(3, 9, 4099, seed=seed, draft=False), "no-draft"),
]

EMPTY_CASES = [
    *[pytest.param(name, empty_batch, id=f"{name}-B0") for name in OPS],
    *[pytest.param(name, no_candidates, id=f"{name}-N0")
      for name in ["draft_cumprod", "select", "tree_mask", "tree_mask_packed"]],  # verify needs M >= 1
]


def capture_cuda_graph(call):
    """Capture `call` in a CUDA graph (after a warm-up on a side stream, as torch.cuda.graphs
    recommends: the select kernel sets its shared-memory attribute on its first call per
    device); returns a replay function giving the graph's static outputs."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = call()

    def replay():
        graph.replay()
        return outputs

    return replay


@pytest.mark.parametrize("name, build", CASES)
def test_graph_replay_follows_inputs(name, build):
    assert_replay_follows_inputs(CUDA, name, build(1), build(2), capture_cuda_graph)


@pytest.mark.filterwarnings("ignore:The CUDA Graph is empty")
@pytest.mark.parametrize("name, empty", EMPTY_CASES)
def test_graph_replay_of_empty_shapes(name, empty):
    assert_replay_follows_inputs(CUDA, name, empty(small_inputs(name, 1)), empty(small_inputs(name, 2)),
                                 capture_cuda_graph, values_matter=False)


@pytest.mark.parametrize("name, build", CASES)
def test_runs_on_the_current_stream(name, build):
    """On a side stream that first sleeps, then writes the inputs: an op launched on any other
    stream would read the old values (pool streams do not synchronise with the default one)."""
    static = to_device(build(1), "cuda")
    new = to_device(build(2), "cuda")
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(100_000_000)  # some 50 ms of GPU time
        write_in_place(static, new)
        outputs = CUDA.op(name)(**static)
    torch.cuda.current_stream().wait_stream(side)
    assert_outputs_match(outputs, CPU(name, build(2)))


def call_without_host_sync(name, inputs):
    """The op on cuda `inputs` with torch's sync debug mode at "error": any call inside it that
    waits for the GPU through torch (.item(), a copy to the host, nonzero, synchronize) raises.
    The first call runs before, outside the mode (per-device setup on a first call is allowed)."""
    inputs = to_device(inputs, "cuda")
    CUDA.op(name)(**inputs)
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        return CUDA.op(name)(**inputs)
    finally:
        torch.cuda.set_sync_debug_mode(previous)


@pytest.mark.parametrize("name, build", CASES)
def test_no_host_synchronisation(name, build):
    assert_outputs_match(call_without_host_sync(name, build(1)), CPU(name, build(1)))


@pytest.mark.parametrize("name, empty", EMPTY_CASES)
def test_no_host_synchronisation_on_empty_shapes(name, empty):
    inputs = empty(small_inputs(name))
    assert_outputs_match(call_without_host_sync(name, inputs), CPU(name, inputs))


@pytest.mark.parametrize("name, build", CASES)
def test_deterministic(name, build):
    assert_deterministic(CUDA, name, build(3))


@pytest.mark.parametrize("name", OPS)
def test_empty_shapes(name):
    assert_matches_cpu(CUDA, name, empty_batch(small_inputs(name)))
    if not name.startswith("verify"):
        assert_matches_cpu(CUDA, name, no_candidates(small_inputs(name)))
