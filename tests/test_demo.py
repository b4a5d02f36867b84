"""Smoke test of the demo path on a tiny model (the real demo runs Gemma 3 270M)."""

import json

import pytest
import torch

import tetris_ext  # noqa: F401
from tetris_ext import demo
from tetris_ext.drafters import NgramDrafter
from tetris_ext.models import tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_bundled_prompts():
    prompts = demo.load_prompts(None, None)
    assert len(prompts) >= 24
    assert len({p["id"] for p in prompts}) == len(prompts)
    categories = {p["category"] for p in prompts}
    assert {"code-edit", "list", "summary", "free-text"} <= categories
    assert len(demo.load_prompts(None, 5)) == 5


def test_default_policies_are_the_issues_six():
    args = demo.parse_args([])
    names = [p.name for p in demo.make_policies(args)]
    assert names == [
        "Autoregressive",
        "StandardSD(3)",
        "GoodputSD(6)",
        "ThresholdSD(0.5, 6)",
        "Tetris(3, 2)",
        "GoodputTetris(5)",
        "CostAwareTetris(5)",  # priced for the loop it runs in, which tells it its shape
    ]
    assert args.batch_size == 8 and args.max_new_tokens == 64 and args.loop == "flat"
    args = demo.parse_args(["--policy", "tetris", "--k", "2", "--extra", "1", "--batch-size", "4"])
    assert [p.name for p in demo.make_policies(args)] == ["Autoregressive", "Tetris(2, 1)"]


@pytest.mark.parametrize("loop", ["flat", "padded"])
def test_demo_pipeline_on_a_tiny_model(tmp_path, loop, monkeypatch):
    loops = []  # the loop of every generate call the demo makes

    def generate(*args, flat=False, **kwargs):
        loops.append("flat" if flat else "padded")
        return real_generate(*args, flat=flat, **kwargs)

    real_generate = demo.generate
    monkeypatch.setattr(demo, "generate", generate)
    target = tiny_llama(vocab_size=48, seed=2)
    g = torch.Generator().manual_seed(0)
    # Prompts with repeats, so that n-gram drafting has something to find.
    prompts = [(torch.randint(0, 48, (4,), generator=g).tolist() * 3)[:n] for n in (5, 12, 7, 9, 3, 11)]
    policies = demo.make_policies(demo.parse_args(["--loop", loop]))
    runs = demo.run_policies(
        target,
        prompts,
        policies,
        lambda: NgramDrafter(6),
        batch_size=4,
        max_new_tokens=8,
        progress=False,
        flat=loop == "flat",
    )
    assert [r["policy"] for r in runs] == [p.name for p in policies]
    assert loops == [loop] * (1 + len(policies))  # the warm-up, then one run per policy
    # The policies that price steps were priced for the loop they ran in (the demo passes no flag).
    pricing = [p for p in policies if p.name.startswith(("GoodputSD", "GoodputTetris", "CostAwareTetris"))]
    assert len(pricing) == 3 and all(p.padded == (loop == "padded") for p in pricing)
    assert runs[-1]["policy"] == f"CostAwareTetris(5, {loop})"
    assert runs[0]["speedup"] == 1.0
    for r in runs:
        assert r["same_output_as_baseline"] == len(prompts)  # greedy: every policy gives the same text
        assert r["generated_tokens"] == 8 * len(prompts)
    assert all(r["verification_success_rate"] is not None for r in runs[1:])
    table = demo.format_table(runs)
    assert "Tetris(3, 2)" in table and "speed-up" in table
    paths = demo.write_outputs(runs, {"target": "tiny", "drafter": "NgramDrafter", "batch_size": 4}, tmp_path)
    for key in ("json", "chart", "reliability", "table"):
        assert paths[key].exists() and paths[key].stat().st_size > 0
    data = json.loads(paths["json"].read_text())
    assert [r["policy"] for r in data["runs"]] == [p.name for p in policies]
    assert "brier_path" in data["runs"][1] and "reliability_path" in data["runs"][1]
