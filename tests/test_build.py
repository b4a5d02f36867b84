"""The compiled library registers every op, for each backend the build had."""

import pytest
import torch

import tetris_ext

OPS = ["draft_cumprod", "select", "tree_mask", "tree_mask_packed", "verify_greedy", "verify_sampling"]


@pytest.mark.parametrize("op", OPS)
def test_schema_registered(op):
    assert torch._C._jit_get_schemas_for_operator(f"tetris::{op}"), op
