"""The backends an op runs on, and checks of a kernel backend against the CPU ops.

A backend is an op namespace and a device: ``tetris`` on ``cpu`` is the CPU op, ``tetris`` on
``cuda`` dispatches to the CUDA kernels, ``tetris_emu`` on ``cpu`` to the emulated ones (the
kernel text run on the CPU by csrc's emulation harness). tests/conftest.py hands them to the
tests as the ``backend`` fixture (every backend) and ``kernel_backend`` (the kernels, compared
with the CPU op); a backend the build or machine lacks is skipped. The emulated kernels run
every check in CI, so these helpers are themselves exercised and can fail without a GPU.
Inputs are the ops' keyword arguments as CPU tensors (tests/refs strategies and
tests/refs/blocks.py builders); the helpers move them to the backend's device with their layout
(strides, storage offset) unchanged.

Outputs agree with the CPU op as docs/kernels.md states: integer and boolean outputs bit for
bit, float outputs within 1e-5 absolute and relative (reductions run in another order), with
the same -inf / NaN pattern. Two runs of one backend agree bit for bit, floats included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from hypothesis import given, settings

import tetris_ext  # noqa: F401  (registers torch.ops.tetris and tetris_emu)

from .blocks import (
    draft_cumprod_block_inputs,
    greedy_block_inputs,
    sampling_block_inputs,
    select_block_inputs,
    tree_mask_block_inputs,
)

OPS = ("draft_cumprod", "select", "tree_mask", "tree_mask_packed", "verify_greedy", "verify_sampling")
FLOAT_TOLERANCE = 1e-5

Inputs = dict  # keyword arguments of one op call
Outputs = tuple  # the op's output tensors


@dataclass(frozen=True)
class Backend:
    name: str  # the test id: "cpu", "emulated" or "cuda"
    namespace: str  # "tetris" or "tetris_emu"
    device: str  # where its tensors live: "cuda" or "cpu"
    dispatch_key: str  # the kernel's dispatch key: "CUDA" or "CPU"

    @property
    def other_device(self) -> str:
        """A device none of its arguments may be on ("meta" stands in for one beside the CPU)."""
        return "cpu" if self.device != "cpu" else "meta"

    def op(self, name: str):
        return getattr(getattr(torch.ops, self.namespace), name).default

    def kernel(self, name: str) -> Callable:
        """The backend's kernel itself, also when an argument lives on another device (the
        dispatcher would send a meta tensor to the fake implementation instead)."""
        keyset = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, self.dispatch_key))
        return lambda **inputs: self.op(name).redispatch(keyset, **inputs)

    def __call__(self, name: str, inputs: Inputs) -> Outputs:
        """The op on `inputs`, moved to this backend's device."""
        return self.op(name)(**to_device(inputs, self.device))

    def run(self, name: str, *args):
        """The op called as ``torch.ops.tetris.<name>(*args)`` with CPU arguments: tensors are
        moved to this backend's device with their layout, outputs come back to the CPU."""
        outputs = self.op(name)(
            *[same_layout_on(a, self.device) if isinstance(a, torch.Tensor) else a for a in args]
        )
        return tuple(t.cpu() for t in outputs)

    def __str__(self) -> str:
        return self.name


CPU = Backend("cpu", "tetris", "cpu", "CPU")
CUDA = Backend("cuda", "tetris", "cuda", "CUDA")
EMULATED = Backend("emulated", "tetris_emu", "cpu", "CPU")
BACKENDS = {backend.name: backend for backend in (CPU, EMULATED, CUDA)}


# -- inputs -----------------------------------------------------------------------------------------


def small_inputs(name: str, seed: int = 1) -> Inputs:
    """A small valid call of `name` with every optional tensor present; two seeds give
    different outputs."""
    return {
        "draft_cumprod": lambda: draft_cumprod_block_inputs(3, 4, 9, seed=seed),
        "select": lambda: select_block_inputs(3, 6, 7, style="ties", caps=True, min_score=-1.2, seed=seed),
        "tree_mask": lambda: tree_mask_block_inputs(3, 6, seed=seed),
        "tree_mask_packed": lambda: tree_mask_block_inputs(3, 6, seed=seed),
        "verify_greedy": lambda: greedy_block_inputs(3, 6, seed=seed),
        "verify_sampling": lambda: sampling_block_inputs(3, 6, 9, seed=seed, draft=True),
    }[name]()


def empty_batch(inputs: Inputs) -> Inputs:
    """B = 0: every tensor argument loses its batch (the first dimension of each)."""
    return {k: v[:0] if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def no_candidates(inputs: Inputs) -> Inputs:
    """N = 0 for draft_cumprod, select and tree_mask: the second dimension of the [B, N, ...]
    tensors is emptied ([B] tensors such as caps and prefix lengths keep their size)."""
    return {k: v[:, :0] if isinstance(v, torch.Tensor) and v.dim() >= 2 else v for k, v in inputs.items()}


# (op, argument, how to spoil the valid value of small_inputs): each op's dtype, rank, size
# and scalar checks. The backends must raise exactly as the CPU op does.
BAD_ARGUMENTS = [
    ("draft_cumprod", "logits", lambda t: t.double()),
    ("draft_cumprod", "logits", lambda t: t[0]),
    ("draft_cumprod", "tokens", lambda t: t.float()),
    ("draft_cumprod", "tokens", lambda t: t[:, :2]),
    ("draft_cumprod", "parents", lambda t: t[:1]),
    ("draft_cumprod", "temperature", lambda x: 0.0),
    ("draft_cumprod", "temperature", lambda x: float("nan")),
    ("select", "scores", lambda t: t.double()),
    ("select", "scores", lambda t: t[0]),
    ("select", "budget", lambda x: -1),
    ("select", "parents", lambda t: t.float()),
    ("select", "parents", lambda t: t[:, :2]),
    ("select", "max_per_request", lambda t: t[:1]),
    ("select", "min_score", lambda x: float("nan")),
    ("tree_mask", "selected", lambda t: t.int()),
    ("tree_mask", "parents", lambda t: t[:, :2]),
    ("tree_mask", "prefix_lens", lambda t: t.float()),
    ("tree_mask_packed", "prefix_lens", lambda t: t[:1]),
    ("tree_mask_packed", "selected", lambda t: t[0]),
    ("verify_greedy", "slot_tokens", lambda t: t[:, :0]),
    ("verify_greedy", "slot_parent", lambda t: t[:1]),
    ("verify_greedy", "target_tokens", lambda t: t.float()),
    ("verify_sampling", "target_probs", lambda t: t.half()),
    ("verify_sampling", "target_probs", lambda t: t[..., :0]),
    ("verify_sampling", "draft_probs", lambda t: t[..., :4]),
    ("verify_sampling", "uniforms", lambda t: t.double()),
    ("verify_sampling", "uniforms", lambda t: t[:, :2]),
]


def bad_inputs(name: str, arg: str, spoil: Callable) -> Inputs:
    inputs = small_inputs(name)
    return {**inputs, arg: spoil(inputs[arg])}


# Every tensor argument but the first (the one the others' device is checked against).
OTHER_DEVICE_ARGUMENTS = [
    (name, arg)
    for name in OPS
    for arg in [k for k, v in small_inputs(name).items() if isinstance(v, torch.Tensor)][1:]
]


# -- moving inputs ---------------------------------------------------------------------------------


def same_layout_on(t: torch.Tensor, device) -> torch.Tensor:
    """A copy of `t` on `device` with the same sizes, strides and storage offset (so a strided
    or misaligned row stays strided or misaligned, and a broadcast one stays broadcast)."""
    if t.numel() == 0:
        return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=device)
    end = t.storage_offset() + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride())) + 1
    storage = t.as_strided((end,), (1,), 0).to(device, copy=True)
    return storage.as_strided(t.shape, t.stride(), t.storage_offset())


def to_device(inputs: Inputs, device) -> Inputs:
    return {k: same_layout_on(v, device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def write_in_place(static: Inputs, new: Inputs) -> None:
    """Overwrite the tensors of `static` with the values of `new` (same shapes, dtypes and
    scalar arguments): what an engine does to a CUDA graph's input buffers between replays."""
    assert static.keys() == new.keys()
    for k, v in static.items():
        if isinstance(v, torch.Tensor):
            assert isinstance(new[k], torch.Tensor) and new[k].shape == v.shape and new[k].dtype == v.dtype, k
            v.copy_(new[k])
        else:
            assert new[k] == v, f"scalar argument {k!r} differs ({v} vs {new[k]}): a graph bakes it in"


# -- comparing outputs -----------------------------------------------------------------------------


def bits(t: torch.Tensor) -> torch.Tensor:
    """The bytes of `t` (NaN equals NaN, -0.0 differs from 0.0)."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def assert_outputs_match(actual: Outputs, expected: Outputs, *, exact: bool = False) -> None:
    """Same number of outputs, dtypes and shapes; integers and booleans equal; floats within
    FLOAT_TOLERANCE (or bit for bit with `exact`), NaN and infinities in the same places."""
    assert len(actual) == len(expected), f"{len(actual)} outputs, expected {len(expected)}"
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a.dtype == e.dtype and a.shape == e.shape, (
            f"output {i}: {a.dtype} {tuple(a.shape)}, expected {e.dtype} {tuple(e.shape)}"
        )
        if exact:
            assert torch.equal(bits(a), bits(e)), f"output {i} differs in its bits"
        elif e.is_floating_point():
            torch.testing.assert_close(
                a.cpu(),
                e.cpu(),
                atol=FLOAT_TOLERANCE,
                rtol=FLOAT_TOLERANCE,
                equal_nan=True,
                msg=lambda m, i=i: f"output {i}: {m}",
            )
        else:
            assert torch.equal(a.cpu(), e.cpu()), f"output {i}:\n{a.cpu()}\n!=\n{e.cpu()}"


def assert_matches_cpu(backend: Backend, name: str, inputs: Inputs) -> Outputs:
    actual = backend(name, inputs)
    assert_outputs_match(actual, CPU(name, inputs))
    return actual


def assert_matches_cpu_on_examples(backend: Backend, name: str, strategy, max_examples: int) -> None:
    """assert_matches_cpu on hypothesis examples of `strategy` (settings chosen per call, so that
    one parametrised test can draw inputs of several sizes, each with its own number)."""

    @settings(max_examples=max_examples, deadline=None)
    @given(strategy)
    def check(inputs):
        assert_matches_cpu(backend, name, inputs)

    check()


def assert_deterministic(backend: Backend, name: str, inputs: Inputs) -> None:
    """Two calls on the same device buffers give the same bits."""
    on_device = to_device(inputs, backend.device)
    first = [t.clone() for t in backend.op(name)(**on_device)]
    assert_outputs_match(backend.op(name)(**on_device), tuple(first), exact=True)


# -- bad arguments ---------------------------------------------------------------------------------


def first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else ""


def assert_rejects_like_cpu(backend: Backend, name: str, inputs: Inputs) -> None:
    """The CPU op rejects `inputs`; the backend raises the same exception type and message."""
    try:
        CPU(name, inputs)
    except Exception as error:  # noqa: BLE001 (any exception the op raises is the reference)
        cpu_error = error
    else:
        raise AssertionError(f"{name}: the CPU op accepts these inputs; not a bad-argument case")
    try:
        backend(name, inputs)
    except Exception as error:  # noqa: BLE001
        assert type(error) is type(cpu_error), (
            f"{type(error).__name__}: {error} (CPU: {type(cpu_error).__name__})"
        )
        assert first_line(error) == first_line(cpu_error), (
            f"{first_line(error)!r} != {first_line(cpu_error)!r}"
        )
    else:
        raise AssertionError(
            f"{name}: {backend.namespace} on {backend.device} accepts what the CPU op rejects: {cpu_error}"
        )


def assert_rejects_other_device(backend: Backend, name: str, inputs: Inputs, arg: str, other_device) -> None:
    """Every tensor on the backend's device but `arg` on `other_device`: the backend's kernel
    raises a ValueError naming `arg`."""
    mixed = to_device(inputs, backend.device)
    mixed[arg] = same_layout_on(inputs[arg], other_device)
    reference = torch.device(backend.device)
    try:
        backend.kernel(name)(**mixed)
    except ValueError as error:
        expected = f"{name}: argument '{arg}': expected a tensor on {reference.type}"
        assert first_line(error).startswith(expected), (
            f"{first_line(error)!r} does not start with {expected!r}"
        )
    else:
        raise AssertionError(f"{name}: '{arg}' on {other_device} is accepted")


# -- captured and replayed calls -------------------------------------------------------------------

# A recorder turns "call the op on these static buffers" into a replay function returning the
# outputs of the latest replay: capture_cuda_graph on a GPU (tests/test_cuda.py); on the CPU,
# rerun_eagerly is the behaviour a graph must have.
Recorder = Callable[[Callable[[], Outputs]], Callable[[], Outputs]]


def rerun_eagerly(call: Callable[[], Outputs]) -> Callable[[], Outputs]:
    return call


def assert_replay_follows_inputs(
    backend: Backend,
    name: str,
    first: Inputs,
    second: Inputs,
    record: Recorder,
    *,
    values_matter: bool = True,
) -> None:
    """Record the op on static device buffers holding `first`, then overwrite the buffers with
    `second` in place and replay: the replay gives the eager result on `second` (bit for bit)
    and the CPU op's result (within tolerance). So the op reads every value on the device at
    run time: no host synchronisation, nothing sized or decided from values at record time.
    `values_matter`: `first` and `second` must give different outputs (else the replay could
    pass by repeating the recorded result); False for empty shapes."""
    static = to_device(first, backend.device)
    op = backend.op(name)
    eager_first = tuple(t.clone() for t in op(**static))  # also the warm-up (kernel attributes)
    eager_second = op(**to_device(second, backend.device))
    if values_matter:
        assert any(not torch.equal(bits(a), bits(b)) for a, b in zip(eager_first, eager_second)), (
            "first and second inputs give the same outputs: the replay check would prove nothing"
        )
    replay = record(lambda: op(**static))
    assert_outputs_match(tuple(t.clone() for t in replay()), eager_first, exact=True)
    write_in_place(static, to_device(second, backend.device))
    replayed = tuple(t.clone() for t in replay())
    assert_outputs_match(replayed, eager_second, exact=True)
    assert_outputs_match(replayed, CPU(name, second))


def assert_replay_of_empty_shapes(
    backend: Backend, name: str, empty: Callable[[Inputs], Inputs], record: Recorder
) -> None:
    """assert_replay_follows_inputs on two small calls emptied by `empty` (empty_batch or
    no_candidates): nothing to compute, so the outputs need not differ."""
    assert_replay_follows_inputs(
        backend, name, empty(small_inputs(name, 1)), empty(small_inputs(name, 2)), record, values_matter=False
    )
