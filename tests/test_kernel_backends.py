"""What every op must do on every kernel backend (tests/refs/backends.py; the fixtures in
tests/conftest.py): outputs fully written, empty shapes, bad arguments rejected as the CPU op
rejects them, an argument on another device named (the CPU op too); and draft_cumprod and
select against the CPU op on the op tests' random inputs (tree_mask and verify_*: with their
strided variants in tests/test_<op>.py). Then the checks of the
checks: the helpers pass on the emulated kernels and fail on wrong results (negative controls),
so that they are known to be able to fail where no GPU is present. The per-op comparisons are
in tests/test_<op>.py; what only CUDA has (streams, graphs, host synchronisation) in
tests/test_cuda.py.
"""

from __future__ import annotations

import pytest
import torch

from refs.backends import (
    BAD_ARGUMENTS,
    OPS,
    OTHER_DEVICE_ARGUMENTS,
    assert_deterministic,
    assert_matches_cpu,
    assert_matches_cpu_on_examples,
    assert_outputs_match,
    assert_rejects_like_cpu,
    assert_rejects_other_device,
    assert_replay_follows_inputs,
    assert_replay_of_empty_shapes,
    bad_inputs,
    empty_batch,
    no_candidates,
    rerun_eagerly,
    same_layout_on,
    small_inputs,
)
from refs.draft_cumprod import draft_cumprod_inputs
from refs.layouts import with_layout
from refs.select import select_inputs

# The op tests' random inputs (tests/refs strategies), and larger ones, with how many examples.
RANDOM_INPUTS = [
    pytest.param("draft_cumprod", draft_cumprod_inputs(), 200, id="draft_cumprod"),
    pytest.param(
        "draft_cumprod", draft_cumprod_inputs(max_batch=40, max_candidates=40), 40, id="draft_cumprod-larger"
    ),
    pytest.param("select", select_inputs(), 300, id="select"),
    pytest.param("select", select_inputs(max_batch=70, max_candidates=40), 60, id="select-larger"),
]


@pytest.mark.parametrize("name, strategy, examples", RANDOM_INPUTS)
def test_matches_cpu_on_random_inputs(kernel_backend, name, strategy, examples):
    assert_matches_cpu_on_examples(kernel_backend, name, strategy, examples)


@pytest.mark.parametrize("name", OPS)
def test_outputs_are_fully_written(kernel_backend, poisoned_empty, name):
    assert_matches_cpu(kernel_backend, name, small_inputs(name))


@pytest.mark.parametrize("name", OPS)
def test_empty_shapes(kernel_backend, name):
    assert_matches_cpu(kernel_backend, name, empty_batch(small_inputs(name)))
    if not name.startswith("verify"):  # verify needs M >= 1 slots
        assert_matches_cpu(kernel_backend, name, no_candidates(small_inputs(name)))


@pytest.mark.parametrize("name, arg, spoil", BAD_ARGUMENTS, ids=lambda x: x if isinstance(x, str) else "")
def test_bad_arguments_raise_as_on_cpu(kernel_backend, name, arg, spoil):
    assert_rejects_like_cpu(kernel_backend, name, bad_inputs(name, arg, spoil))


# The other device is "meta" beside the CPU, the CPU beside cuda.
@pytest.mark.parametrize("name, arg", OTHER_DEVICE_ARGUMENTS)
def test_argument_on_another_device(backend, name, arg):
    assert_rejects_other_device(backend, name, small_inputs(name), arg, backend.other_device)


# -- the checks pass on the emulated kernels (on a GPU: tests/test_cuda.py, with CUDA graphs) -------


@pytest.mark.parametrize("name", OPS)
def test_emulated_kernels_pass_every_check(emulated, name):
    assert_matches_cpu(emulated, name, small_inputs(name))
    assert_deterministic(emulated, name, small_inputs(name))
    assert_replay_follows_inputs(emulated, name, small_inputs(name, 1), small_inputs(name, 2), rerun_eagerly)
    for empty in [empty_batch] + ([] if name.startswith("verify") else [no_candidates]):
        assert_replay_of_empty_shapes(emulated, name, empty, rerun_eagerly)


# -- negative controls: each check fails on a wrong result --------------------------------------------


def frozen_at_record_time(call):
    """A 'graph' that computed its outputs once, from the values present when it was recorded
    (what an op reading values on the host while capturing would give)."""
    outputs = tuple(t.clone() for t in call())
    return lambda: outputs


@pytest.mark.parametrize("name", OPS)
def test_replay_check_catches_values_read_at_record_time(emulated, name):
    with pytest.raises(AssertionError):
        assert_replay_follows_inputs(
            emulated, name, small_inputs(name, 1), small_inputs(name, 2), frozen_at_record_time
        )


def test_replay_check_refuses_inputs_that_prove_nothing(emulated):
    with pytest.raises(AssertionError, match="prove nothing"):
        assert_replay_follows_inputs(
            emulated, "select", small_inputs("select"), small_inputs("select"), rerun_eagerly
        )


def test_output_comparison_fails_on_any_difference():
    ints, flags = torch.tensor([1, 2, 3]), torch.tensor([True, False])
    floats = torch.tensor([0.5, float("-inf"), float("nan"), 3.0])
    assert_outputs_match((ints, flags, floats), (ints.clone(), flags.clone(), floats.clone()), exact=True)
    assert_outputs_match((floats + 1e-7,), (floats,))  # within 1e-5
    wrong = [
        ((ints + torch.tensor([0, 0, 1]),), (ints,)),  # one integer off by one
        ((~flags,), (flags,)),
        ((floats + 1e-3,), (floats,)),
        ((floats + 1e-7,), (floats,), True),  # exact: one ulp matters
        ((torch.tensor([0.5, -3.0e38, float("nan"), 3.0]),), (floats,)),  # -inf pattern
        ((torch.tensor([0.5, float("-inf"), 0.0, 3.0]),), (floats,)),  # NaN pattern
        ((ints.int(),), (ints,)),  # dtype
        ((ints[:2],), (ints[:2].reshape(1, 2),)),  # shape
        ((ints, ints), (ints,)),  # number of outputs
    ]
    for actual, expected, *exact in wrong:
        with pytest.raises(AssertionError):
            assert_outputs_match(actual, expected, exact=bool(exact))


def test_bad_argument_check_requires_a_bad_argument(emulated):
    with pytest.raises(AssertionError, match="not a bad-argument case"):
        assert_rejects_like_cpu(emulated, "select", small_inputs("select"))


def test_other_device_check_fails_when_accepted(emulated):
    # The CPU op and the emulated kernel share a device: a CPU argument is accepted.
    with pytest.raises(AssertionError, match="is accepted"):
        assert_rejects_other_device(emulated, "select", small_inputs("select"), "parents", "cpu")


@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided"])
def test_inputs_keep_their_layout(layout):
    t = with_layout(torch.randn(5, 7), layout)
    for view in [t, t[1:, 3:], t[:, :1].expand(5, 4), t[:0]]:
        copy = same_layout_on(view, "cpu")
        assert copy.stride() == view.stride() and copy.storage_offset() == view.storage_offset()
        assert copy.data_ptr() != view.data_ptr() or view.numel() == 0
        assert torch.equal(copy, view)
