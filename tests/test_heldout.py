"""tetris_ext.heldout: the split by source, the metrics against hand-computed values, and the
collection of (estimate, outcome) pairs from a replay."""

import math

import pytest
import torch

import tetris_ext  # noqa: F401
from tetris_ext import heldout
from tetris_ext.calibration import AcceptanceCalibration
from tetris_ext.drafters import NgramDrafter
from tetris_ext.estimators import ConstantRate, NgramLogistic
from tetris_ext.models import tiny_llama
from tetris_ext.sim import record

pytestmark = pytest.mark.usefixtures("one_thread")


def test_split_by_source_keeps_whole_sources_apart():
    traces = {"bundled": 1, "code": 2, "chat": 3}
    tuning, held = heldout.split_by_source(traces, ["code", "chat"])
    assert tuning == {"bundled": 1} and held == {"code": 2, "chat": 3}
    for bad in (["nope"], [], ["bundled", "code", "chat"]):
        with pytest.raises(ValueError):
            heldout.split_by_source(traces, bad)


def test_metrics_match_hand_computed_values():
    p = torch.tensor([0.9, 0.8, 0.3, 0.3, 0.1])
    y = torch.tensor([True, False, True, False, False])
    # Brier: (0.01 + 0.64 + 0.49 + 0.09 + 0.01) / 5
    assert heldout.score(heldout.Predictions(p.double(), y, p.double(), y))["brier"] == pytest.approx(
        1.24 / 5
    )
    expected_log_loss = -(math.log(0.9) + math.log(0.2) + math.log(0.3) + math.log(0.7) + math.log(0.9)) / 5
    assert heldout.log_loss(p, y) == pytest.approx(expected_log_loss)
    # AUC: positive/negative pairs (0.9 vs 0.8, 0.3, 0.1: 3 wins), (0.3 vs 0.8: loss, 0.3: tie, 0.1: win)
    assert heldout.auc(p, y) == pytest.approx((3 + 1 + 0.5) / 6)
    assert heldout.auc(torch.tensor([0.5, 0.5]), torch.tensor([True, False])) == 0.5
    assert math.isnan(heldout.auc(p, torch.ones(5, dtype=torch.bool)))
    table = heldout.score(heldout.Predictions(p.double(), y, p.double(), y), bins=2)["reliability"]
    assert [r["count"] for r in table] == [3, 2]
    assert table[0]["observed"] == pytest.approx(1 / 3) and table[1]["mean_predicted"] == pytest.approx(0.85)


def test_collect_gives_every_estimator_the_same_tested_tokens(tmp_path):
    copier = tiny_llama(vocab_size=16, seed=0)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 16, (4 + 3 * i,), generator=g).tolist() for i in range(4)]
    trace = record(copier, NgramDrafter(4), prompts, max_new_tokens=16, max_draft=4)
    runs = {
        name: heldout.collect(trace, make(), batch_size=2)
        for name, make in (
            ("constant", lambda: ConstantRate(0.4)),
            ("calibration", AcceptanceCalibration),
            ("logistic", NgramLogistic),
        )
    }
    outcomes = {name: p.token_accepted.tolist() for name, p in runs.items()}
    assert len(set(map(tuple, outcomes.values()))) == 1 and len(outcomes["constant"]) > 10
    assert torch.allclose(
        runs["constant"].token_estimate, torch.tensor(0.4, dtype=torch.float64)
    )  # float32 logs
    # The path estimate of a depth-d candidate is the product of its token estimates.
    powers = torch.tensor([0.4**d for d in range(1, 5)], dtype=torch.float64)
    assert bool(((runs["constant"].path_estimate[:, None] - powers).abs().min(1).values < 1e-6).all())
    scores = heldout.score(runs["logistic"])
    assert 0.0 <= scores["brier"] <= 1.0 and scores["tested_tokens"] == len(outcomes["logistic"])
    depths = scores["by_depth"]
    assert sum(v["tested_tokens"] for v in depths.values()) == scores["tested_tokens"]
    assert "1" in depths and sum(v["error_share"] for v in depths.values()) == pytest.approx(1.0)
    brier = sum(v["brier"] * v["tested_tokens"] for v in depths.values()) / scores["tested_tokens"]
    assert brier == pytest.approx(scores["brier"])
    heldout.plot_reliability(
        {n: heldout.score(p)["reliability"] for n, p in runs.items()}, tmp_path / "r.png", "t"
    )
    assert (tmp_path / "r.png").stat().st_size > 1000
