"""The compiled library registers every op, for each backend the build had."""

import pytest
import torch

import tetris_ext

# Every op the package wraps (tetris_ext.ops), so a new op cannot be left out of these checks.
OPS = list(tetris_ext.ops.__all__)


@pytest.mark.parametrize("op", OPS)
def test_schema_registered(op):
    assert torch._C._jit_get_schemas_for_operator(f"tetris::{op}"), op


# A build with CUDA has a CUDA kernel for every op, and an emulated twin of each
# (tetris_emu, CPU) when built with TETRIS_EMULATION=1.
@pytest.mark.parametrize("op", OPS)
def test_cuda_kernel_registered(op):
    if not tetris_ext.BUILT_WITH_CUDA:
        pytest.skip("built without CUDA (TETRIS_CUDA=off or no nvcc)")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"tetris::{op}", "CUDA"), op


@pytest.mark.parametrize("op", OPS)
def test_emulated_kernel_registered(op):
    if not tetris_ext.HAS_EMULATION:
        pytest.skip("built without TETRIS_EMULATION=1")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"tetris_emu::{op}", "CPU"), op
