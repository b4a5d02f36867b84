"""What only the CUDA kernels have: streams, CUDA graphs, host synchronisation (on a real GPU;
`make test-gpu`, docs/gpu.md; skipped where no CUDA device is present).

Where a GPU is present, the library must have been built with CUDA. The comparisons of the CUDA
kernels with the CPU ops (the op tests' random inputs, block-boundary shapes, shapes too large
for the emulator, bad arguments, arguments on another device) are the `kernel_backend` and
`backend` tests of tests/test_<op>.py and tests/test_kernel_backends.py, where the emulated
kernels run them too. Here: the ops run on the current stream, replay correctly from a CUDA
graph after their inputs change in place (capture-safe: no sync, no value-dependent
allocation), B = 0 / N = 0 included, make no host synchronisation
(torch.cuda.set_sync_debug_mode("error") around the call), and give the same bits twice.
"""

from __future__ import annotations

import pytest
import torch

import tetris_ext
from refs.backends import (
    CPU,
    CUDA,
    OPS,
    assert_deterministic,
    assert_outputs_match,
    assert_replay_follows_inputs,
    assert_replay_of_empty_shapes,
    empty_batch,
    no_candidates,
    small_inputs,
    to_device,
    write_in_place,
)
from refs.blocks import (
    draft_cumprod_block_inputs,
    greedy_block_inputs,
    sampling_block_inputs,
    select_block_inputs,
    tree_mask_block_inputs,
)
from refs.select_prefixes import random_probs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

TREE_MASK_OPS = ["tree_mask", "tree_mask_packed"]


def test_library_has_the_cuda_kernels():
    assert tetris_ext.BUILT_WITH_CUDA, (
        "a GPU is present but the library was built without CUDA (TETRIS_CUDA=on)"
    )
    for name in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"tetris::{name}", "CUDA"), name


@pytest.mark.parametrize("name", OPS)
def test_first_argument_on_the_cpu_raises(name):
    """The others on cuda: the dispatcher still picks the CUDA kernel, whose checks name the
    first argument that is not on the first one's device."""
    inputs = to_device(small_inputs(name), "cuda")
    first = next(k for k, v in inputs.items() if isinstance(v, torch.Tensor))
    inputs[first] = inputs[first].cpu()
    with pytest.raises(
        ValueError, match=rf"{name}: argument '\w+': expected a tensor on cpu \(the device of '{first}'\)"
    ):
        getattr(torch.ops.tetris, name)(**inputs)


# -- streams, CUDA graphs, determinism ---------------------------------------------------------------


def case(name, build, label):
    """An op and a builder of its inputs from a seed (same shapes for every seed)."""
    return pytest.param(name, build, id=f"{name}-{label}")


CASES = [
    case("draft_cumprod", lambda seed: draft_cumprod_block_inputs(3, 5, 37, seed=seed), "small-tree"),
    case(
        "draft_cumprod",
        lambda seed: draft_cumprod_block_inputs(
            64, 8, 32000, torch.bfloat16, tree=False, seed=seed, specials=False, invalid_rate=0.02
        ),
        "bench-chains-bf16",
    ),
    case(
        "select",
        lambda seed: select_block_inputs(64, 33, 700, style="ties", caps=True, seed=seed),
        "ties-caps",
    ),
    case(
        "select",
        lambda seed: select_block_inputs(256, 16, 2048, tree=False, seed=seed),
        "chains-shared-memory",
    ),
    case(
        "select",
        lambda seed: select_block_inputs(1024, 64, 8192, caps=True, min_score=-40.0, seed=seed),
        "global-workspace",
    ),
    *[case(name, lambda seed: tree_mask_block_inputs(40, 70, seed=seed), "trees") for name in TREE_MASK_OPS],
    *[
        case(name, lambda seed: tree_mask_block_inputs(1025, 5, seed=seed, kind="chain"), "many-chains")
        for name in TREE_MASK_OPS
    ],
    case("verify_greedy", lambda seed: greedy_block_inputs(33, 40, seed=seed), "many-requests"),
    case("verify_greedy", lambda seed: greedy_block_inputs(3, 1025, seed=seed), "large-blocks"),
    case(
        "verify_sampling",
        lambda seed: sampling_block_inputs(4, 17, 32000, seed=seed, draft=True, support=8),
        "bench-draft",
    ),
    case(
        "verify_sampling", lambda seed: sampling_block_inputs(3, 9, 4099, seed=seed, draft=False), "no-draft"
    ),
]

EMPTY_CASES = [
    *[pytest.param(name, empty_batch, id=f"{name}-B0") for name in OPS],
    *[
        pytest.param(name, no_candidates, id=f"{name}-N0")
        for name in ["draft_cumprod", "select", "tree_mask", "tree_mask_packed"]
    ],  # verify needs M >= 1
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
    assert_replay_of_empty_shapes(CUDA, name, empty, capture_cuda_graph)


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


# -- select_prefixes (an in-place op, apart from the OPS above) -------------------------------------

select_prefixes = torch.ops.tetris.select_prefixes.default


def select_prefixes_inputs(B, S, style, seed):
    g = torch.Generator().manual_seed(seed)
    probs = random_probs(g, B + 5, S, style)
    rows = torch.randperm(B + 5, generator=g)[:B]
    lengths = torch.randint(0, S + 2, (B,), generator=g, dtype=torch.int32)
    return probs, rows, lengths, (B * S) // 3 + 1


def on_cuda(probs, rows, lengths, budget):
    return probs.cuda(), rows.cuda(), lengths.cuda(), budget


def test_select_prefixes_graph_replay_follows_inputs_without_sync():
    probs, rows, lengths, budget = on_cuda(*select_prefixes_inputs(256, 8, "continuous", seed=1))
    caps = lengths.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture
        select_prefixes(probs, rows, lengths, budget)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.cuda.graph(graph):
            select_prefixes(probs, rows, lengths, budget)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for seed in range(3):
        new_probs, _, new_caps, _ = select_prefixes_inputs(256, 8, "ties", seed=seed + 10)
        probs.copy_(new_probs)
        caps.copy_(new_caps)
        lengths.copy_(caps)
        graph.replay()
        expected = new_caps.clone()
        select_prefixes(new_probs, rows.cpu(), expected, budget)
        assert torch.equal(lengths.cpu(), expected)


def test_select_prefixes_one_launch_on_the_current_stream_deterministic():
    probs, rows, lengths, budget = on_cuda(*select_prefixes_inputs(1024, 8, "ties", seed=2))
    caps = lengths.clone()
    stream = torch.cuda.Stream()
    with (
        torch.cuda.stream(stream),
        torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof,
    ):
        select_prefixes(probs, rows, lengths, budget)
    stream.synchronize()
    kernels = [
        e
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA and "select_prefixes" in e.name
    ]
    assert len(kernels) == 1, [e.name for e in prof.events()]
    for _ in range(3):
        again = caps.clone()
        select_prefixes(probs, rows, again, budget)
        assert torch.equal(again, lengths)
