"""tetris_ext.vllm.dropin where vLLM is not installed (this suite's environment): it imports,
register() changes nothing (one log line when asked to act), and the replacement function keeps
vLLM's in-place contract on CPU tensors. The tests against vLLM itself: tests_vllm/test_dropin.py."""

from __future__ import annotations

import importlib.util
import logging
import sys

import pytest
import torch

from refs.select_prefixes import adaptive_verification_counts, random_probs
from tetris_ext.vllm import dropin

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here: tests_vllm/ covers it"
)


def test_register_is_the_package_name():
    assert dropin.register is __import__("tetris_ext.vllm", fromlist=["register"]).register


def test_register_without_the_flag_does_nothing(monkeypatch, caplog):
    monkeypatch.delenv(dropin.ENV_FLAG, raising=False)
    with caplog.at_level(logging.INFO):
        dropin.register()
    assert caplog.records == [] and "vllm" not in sys.modules


def test_register_with_the_flag_but_no_vllm_logs_one_line(monkeypatch, caplog):
    monkeypatch.setenv(dropin.ENV_FLAG, "1")
    with caplog.at_level(logging.INFO):
        dropin.register()
    assert [r.getMessage() for r in caplog.records] == [
        "tetris_ext: TETRIS_VLLM_DROPIN=1 ignored, vLLM's adaptive verification left unchanged: "
        "vLLM is not installed"
    ]


@pytest.mark.parametrize("B, num_steps, width", [(1, 1, 1), (8, 8, 8), (256, 8, 8), (40, 5, 7)])
def test_assign_draft_token_budget_in_place(B, num_steps, width):
    g = torch.Generator().manual_seed(B)
    for _ in range(20):
        confidences = random_probs(g, B + 4, width, "continuous")
        idx_mapping = torch.randperm(B + 4, generator=g)[:B].int()
        scheduled = torch.randint(0, num_steps + 1, (B,), generator=g, dtype=torch.int32)
        budget = int(torch.randint(0, max(int(scheduled.sum()), 1), (1,), generator=g))
        capacities = scheduled.clone()
        assert (
            dropin.assign_draft_token_budget(confidences, idx_mapping, capacities, budget, num_steps) is None
        )
        expected = adaptive_verification_counts(
            confidences[:, :num_steps], idx_mapping, scheduled, budget, num_steps
        )
        assert capacities.dtype == torch.int32 and torch.equal(capacities, expected)
