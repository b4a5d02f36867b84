"""Property-based adversarial suite: generated extreme values, shapes, layouts, dtypes,
devices (meta mixes), invalid scalars and aliasing for every op, in both namespaces.

For every generated call:
  - valid calls: the emulated kernel gives the CPU op's result, twice the same bits, and the
    fake implementation (meta tensors) describes the CPU's output shapes and dtypes;
  - spoiled calls (one argument made wrong): either every path accepts it, or the wrapper /
    CPU op raise a clear error naming an argument, and the emulated kernel and both fakes
    (meta tensors and FakeTensorMode) raise the same exception type and message;
  - huge logical shapes (stride-0 expansions) in a child process with a time and memory limit:
    a ValueError naming the argument or a result, never a crash, a hang or an allocation.
Profiles and how to run the long one: adversarial_inputs.py.
"""

from __future__ import annotations

import re

import pytest
import torch
from adversarial_inputs import PROFILE, spoiled_call, valid_inputs
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from subprocess_limits import run_limited
from torch._subclasses.fake_tensor import FakeTensorMode

import tetris_ext
from refs.backends import CPU, OPS, assert_outputs_match, first_line
from refs.draft_cumprod import draft_cumprod_ref


def wrapper(name):
    return getattr(tetris_ext.ops, name)


def outcome(call):
    """("ok", outputs) or ("error", exception)."""
    try:
        return "ok", call()
    except Exception as error:  # noqa: BLE001 (whatever the op raises is compared)
        return "error", error


def on_meta(inputs):
    return {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def in_fake_mode(name, inputs):
    with FakeTensorMode() as mode:
        fake = {
            k: mode.from_tensor(v) if isinstance(v, torch.Tensor) and v.layout == torch.strided else v
            for k, v in inputs.items()
        }
        return wrapper(name)(**fake)


def assert_same_error(error, reference, where):
    assert type(error) is type(reference) and first_line(error) == first_line(reference), (
        f"{where}: {type(error).__name__}: {first_line(error)!r}\n  CPU: {type(reference).__name__}: "
        f"{first_line(reference)!r}"
    )


# -- valid calls --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OPS)
@PROFILE
@given(data=st.data())
def test_valid_calls_agree_across_backends_and_fakes(emulated, name, data):
    inputs = data.draw(valid_inputs(name))
    cpu = CPU.op(name)(**inputs)
    assert_outputs_match(cpu, CPU.op(name)(**inputs), exact=True)  # deterministic
    on_emulator = emulated.op(name)(**inputs)
    if name == "draft_cumprod":  # values down to -1e38 at small T: a relative tolerance too
        for a, e in zip(on_emulator, cpu):
            torch.testing.assert_close(a, e, atol=2e-5, rtol=1e-5, equal_nan=True)
        for a, e in zip(cpu, draft_cumprod_ref(**inputs)):
            torch.testing.assert_close(a, e, atol=2e-5, rtol=1e-5, equal_nan=True)
    else:
        assert_outputs_match(on_emulator, cpu)
    assert_outputs_match(on_emulator, emulated.op(name)(**inputs), exact=True)
    for fake, real in zip(CPU.op(name)(**on_meta(inputs)), cpu):
        assert (fake.shape, fake.dtype, fake.device.type) == (real.shape, real.dtype, "meta")


# -- spoiled calls ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OPS)
@PROFILE
@given(data=st.data())
def test_spoiled_calls_are_rejected_alike_everywhere(emulated, name, data):
    inputs = data.draw(valid_inputs(name))
    arg, bad = data.draw(spoiled_call(name, inputs))
    kind, result = outcome(lambda: wrapper(name)(**bad))
    if kind == "ok":  # still valid (e.g. a dtype that is also allowed): every path agrees
        if any(isinstance(v, torch.Tensor) and v.is_meta for v in bad.values()):
            return  # every tensor on meta (the only one there was moved): nothing to compare
        assert_outputs_match(emulated.op(name)(**bad), result)
        for fake, real in zip(CPU.op(name)(**on_meta(bad)), result):
            assert (fake.shape, fake.dtype) == (real.shape, real.dtype)
        return
    error = result
    message = first_line(error)
    assert isinstance(error, (ValueError, TypeError)), f"{type(error).__name__}: {message}"
    assert re.match(rf"{name}: argument '\w+': ", message), f"does not name the argument: {message!r}"
    # Where the op itself raises this error (not a schema error for a Python int beyond int64,
    # nor "no kernel" for a sparse tensor), so do the CPU kernel itself (no dispatch to the
    # fake for a meta mix) and the emulated kernel.
    kind, op_error = outcome(lambda: CPU.op(name)(**bad))
    assert kind == "error", f"the wrapper rejects what the op accepts: {message}"
    if type(op_error) is type(error) and first_line(op_error) == message:
        for backend in (CPU, emulated):
            kind, other = outcome(lambda backend=backend: backend.kernel(name)(**bad))
            assert kind == "error", f"{backend.namespace} accepts what the CPU op rejects: {message}"
            assert_same_error(other, error, backend.namespace)
    # The fakes: the same error under FakeTensorMode, and with every tensor on meta (unless the
    # spoil was the device itself, which is then no longer mixed).
    kind, fake = outcome(lambda: in_fake_mode(name, bad))
    assert kind == "error", f"FakeTensorMode accepts what the op rejects: {message}"
    assert_same_error(fake, error, "FakeTensorMode")
    if "expected a tensor on" not in message:
        kind, meta = outcome(lambda: wrapper(name)(**on_meta(bad)))
        assert kind == "error", f"meta accepts what the op rejects: {message}"
        assert_same_error(meta, error, "meta")


# -- huge logical shapes, in a child process ----------------------------------------------------------


HUGE_SIZES = [1, 2, 2**15 + 1, 2**16, 2**31 - 2, 2**31, 2**40]

GENERATED_HUGE_SCRIPT = """
import sys, torch, tetris_ext
B, N, name = {B}, {N}, {name!r}
try:  # torch itself refuses to build some of these views (numel overflows int64)
    torch.zeros(1, 1).expand(B, N)
except RuntimeError as error:
    sys.exit(print("no such tensor:", error))
zeros = lambda dtype, *shape: torch.zeros([1] * len(shape), dtype=dtype).expand(*shape)
call = {{
    "select": lambda: torch.ops.{ns}.select(zeros(torch.float32, B, N), 1),
    "draft_cumprod": lambda: torch.ops.{ns}.draft_cumprod(zeros(torch.float32, B, N, 1),
                                                       zeros(torch.long, B, N)),
    "tree_mask": lambda: torch.ops.{ns}.tree_mask(zeros(torch.bool, B, N), None, zeros(torch.long, B)),
    "tree_mask_packed": lambda: torch.ops.{ns}.tree_mask_packed(zeros(torch.bool, B, N), None,
                                                             zeros(torch.long, B)),
    "verify_greedy": lambda: torch.ops.{ns}.verify_greedy(*[zeros(torch.long, B, N)] * 3),
}}[name]
try:
    call()
    print("accepted")
except ValueError as error:
    assert "argument '" in str(error), error
    print("rejected:", str(error).splitlines()[0])
except RuntimeError as error:  # the allocator under the child's memory limit: clean too
    assert "memory" in str(error).lower(), error
    print("out of memory:", str(error).splitlines()[0])
"""


# A child process per example: a few in CI.
@settings(parent=PROFILE, max_examples=min(PROFILE.max_examples, 5))
@given(
    name=st.sampled_from(["select", "draft_cumprod", "tree_mask", "tree_mask_packed", "verify_greedy"]),
    B=st.sampled_from(HUGE_SIZES),
    N=st.sampled_from(HUGE_SIZES),
    ns=st.sampled_from(["tetris", "tetris_emu"] if tetris_ext.HAS_EMULATION else ["tetris"]),
)
def test_generated_huge_shapes_never_crash_or_hang(name, B, N, ns):
    assume(B * N >= 2**20)  # smaller ones just run: not what this test is about
    script = GENERATED_HUGE_SCRIPT.format(B=B, N=N, name=name, ns=ns)
    result = run_limited(script, seconds=120, memory_gib=2)
    assert not result.crashed and result.returncode == 0, result.describe()
