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
