"""Shared fixtures, and the hypothesis profiles: CI runs a fixed set of examples (a red CI is
reproducible); local runs explore new examples each time. HYPOTHESIS_PROFILE=ci|dev overrides
the choice."""

import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: intra-op threads only add synchronisation (badly so on a shared machine).
    A module takes it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def poisoned_empty():
    """at::empty fills new tensors (NaN, INT_MAX, True, 255, ...): an output element a kernel
    fails to write, or scratch it reads before writing, shows up."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    assert torch.utils.deterministic.fill_uninitialized_memory
    yield
    torch.use_deterministic_algorithms(before)


# -- backends: an op's behavioural tests are written once and run on each --------------------------
# tests/refs/backends.py: "cpu" (the CPU op), "emulated" (the kernels run on the CPU by the
# emulation harness, in builds with TETRIS_EMULATION=1) and "cuda" (the CUDA kernels, where a GPU
# is present). A backend the build or the machine lacks is skipped. Session scope: hypothesis
# tests take them too (it refuses function-scoped fixtures).


def _backend(name: str):
    import tetris_ext
    from refs.backends import BACKENDS

    if name == "emulated" and not tetris_ext.HAS_EMULATION:
        pytest.skip("built without TETRIS_EMULATION=1")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return BACKENDS[name]


@pytest.fixture(scope="session", params=["cpu", "emulated", "cuda"])
def backend(request):
    """Every backend of the ops."""
    return _backend(request.param)


@pytest.fixture(scope="session", params=["emulated", "cuda"])
def kernel_backend(request):
    """The kernels (the text nvcc compiles), checked against the CPU op on the same inputs."""
    return _backend(request.param)


@pytest.fixture(scope="session")
def emulated():
    """The emulated kernels alone: what only the emulation harness can do (thread schedules)."""
    return _backend("emulated")


@pytest.fixture(scope="session")
def cuda():
    """The CUDA kernels alone: streams, CUDA graphs, host synchronisation."""
    return _backend("cuda")
