"""Held-out measurement of acceptance estimates: split traces by prompt source, score estimators.

The protocol (bench/estimates.py runs it):

1. Record traces (``sim.record``) on several workloads, one trace per prompt *source* (a prompt
   file: the bundled set, code from this repository, chat instructions, rewrite tasks ...).
2. ``split_by_source``: whole sources go to the tuning part or to the held-out part, never a
   source to both, so nothing about a held-out workload leaks into the fit.
3. ``collect``: replay a trace with ``StandardSD(max_draft)`` (every drafted token verified, so
   the set of *tested* tokens, those whose parent was accepted, is the same for every
   estimator) with the estimator in the n-gram drafter; it learns online exactly as live, and
   every tested token gives one (estimate made before verification, outcome) pair.
4. ``score``: Brier score, log loss, AUC of "accepted" by the estimate across all requests and
   depths, and the reliability table, for the token estimates (p(accepted | parent accepted))
   and for the path estimates TETRIS ranks by (p(accepted), over every verified candidate).

A constant-rate predictor (``estimators.ConstantRate`` at the tuning part's acceptance rate) is
the baseline every estimator must beat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .calibration import brier_score, reliability
from .drafters import NgramDrafter
from .policies import StandardSD

__all__ = ["split_by_source", "Predictions", "collect", "score", "log_loss", "auc", "plot_reliability"]


def split_by_source(traces: dict, held_out) -> tuple[dict, dict]:
    """{source: trace} -> (tuning, held-out) dicts; ``held_out`` names the held-out sources.
    Both parts must be non-empty and every named source must exist."""
    held_out = set(held_out)
    unknown = held_out - set(traces)
    if unknown:
        raise ValueError(f"split_by_source: unknown held-out sources {sorted(unknown)}")
    tuning = {k: v for k, v in traces.items() if k not in held_out}
    testing = {k: v for k, v in traces.items() if k in held_out}
    if not tuning or not testing:
        raise ValueError("split_by_source: both the tuning and the held-out part need a source")
    return tuning, testing


@dataclass
class Predictions:
    """Tested tokens (token estimate, outcome) and verified candidates (path estimate, outcome)."""

    token_estimate: Tensor  # [M] float64, p(accepted | parent accepted), tested tokens only
    token_accepted: Tensor  # [M] bool
    path_estimate: Tensor  # [K] float64, p(accepted), every verified candidate
    path_accepted: Tensor  # [K] bool
    token_depth: Tensor | None = None  # [M] int64, depth of each tested token (1: first draft)

    @staticmethod
    def cat(parts: list[Predictions]) -> Predictions:
        fields = ("token_estimate", "token_accepted", "path_estimate", "path_accepted", "token_depth")
        return Predictions(
            *(
                None
                if any(getattr(p, f) is None for p in parts)
                else torch.cat([getattr(p, f) for p in parts])
                for f in fields
            )
        )

    @property
    def acceptance_rate(self) -> float:
        return float(self.token_accepted.double().mean())


def collect(trace, calibration, batch_size: int = 8) -> Predictions:
    """Replay ``trace`` verifying every drafted token, with an n-gram drafter scoring by
    ``calibration`` (a fresh estimator: it learns during the replay)."""
    from .cost_models import LinearCostModel
    from .sim import replay  # sim imports the decoding loop; keep this module light

    cfg = trace.drafter
    drafter = NgramDrafter(cfg["max_draft"], cfg["max_ngram"], cfg["min_ngram"], calibration=calibration)
    free = LinearCostModel({"step": 1.0}, name="unit")  # time plays no part here
    result = replay(
        trace,
        StandardSD(trace.max_draft),
        batch_size,
        free,
        drafter=drafter,
        keep_steps=False,
        keep_candidates=True,
    )
    c = result.candidates
    tested = torch.tensor(c["tested"], dtype=torch.bool)
    accepted = torch.tensor(c["accepted"], dtype=torch.bool)
    return Predictions(
        torch.tensor(c["predicted_token"], dtype=torch.float64)[tested],
        accepted[tested],
        torch.tensor(c["predicted"], dtype=torch.float64),
        accepted,
        torch.tensor(c["depth"], dtype=torch.long)[tested],
    )


def log_loss(predicted: Tensor, observed: Tensor, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood of 0/1 outcomes (natural log; lower is better)."""
    if predicted.numel() == 0:
        return math.nan
    p = predicted.double().clamp(eps, 1.0 - eps)
    y = observed.double()
    return float(-(y * p.log() + (1.0 - y) * (1.0 - p).log()).mean())


def auc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve of ``labels`` ranked by ``scores`` (ties count one half): the
    probability that a random accepted item scores above a random rejected one."""
    s, y = scores.double().reshape(-1), labels.bool().reshape(-1)
    positives = int(y.sum())
    negatives = y.numel() - positives
    if positives == 0 or negatives == 0:
        return math.nan
    _, inverse, counts = torch.unique(s, sorted=True, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    mean_rank = ends - (counts.double() - 1.0) / 2.0  # 1-based average rank of each distinct score
    rank_sum = float(mean_rank[inverse][y].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def score(predictions: Predictions, bins: int = 10) -> dict:
    """The protocol's metrics for token and path estimates."""
    p = predictions
    return {
        "tested_tokens": int(p.token_accepted.numel()),
        "acceptance_rate": p.acceptance_rate,
        "brier": brier_score(p.token_estimate, p.token_accepted),
        "log_loss": log_loss(p.token_estimate, p.token_accepted),
        "auc": auc(p.token_estimate, p.token_accepted),
        "reliability": reliability(p.token_estimate, p.token_accepted, bins),
        "verified_candidates": int(p.path_accepted.numel()),
        "path_brier": brier_score(p.path_estimate, p.path_accepted),
        "path_auc": auc(p.path_estimate, p.path_accepted),
        "by_depth": _by_depth(p),
    }


DEPTH_GROUPS = ((1, 1), (2, 2), (3, 4), (5, 1 << 30))


def _by_depth(p: Predictions) -> dict:
    """Tested tokens, acceptance rate, Brier and share of the squared error per depth group."""
    if p.token_depth is None:
        return {}
    squared = (p.token_estimate.double() - p.token_accepted.double()) ** 2
    total = float(squared.sum()) or 1.0
    out = {}
    for low, high in DEPTH_GROUPS:
        inside = (p.token_depth >= low) & (p.token_depth <= high)
        if inside.any():
            out[f"{low}" if low == high else f"{low}+" if high > 64 else f"{low}-{high}"] = {
                "tested_tokens": int(inside.sum()),
                "acceptance_rate": float(p.token_accepted[inside].double().mean()),
                "brier": float(squared[inside].mean()),
                "error_share": float(squared[inside].sum()) / total,
            }
    return out


def plot_reliability(tables: dict[str, list[dict]], path, title: str) -> None:
    """Reliability diagram (PNG): observed acceptance against mean estimate per bin, one line
    per estimator, marker area by bin count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="perfect calibration")
    for name, table in tables.items():
        rows = [r for r in table if r["count"] > 0]
        total = sum(r["count"] for r in rows) or 1
        ax.plot(
            [r["mean_predicted"] for r in rows], [r["observed"] for r in rows], marker="o", lw=1, label=name
        )
        ax.scatter(
            [r["mean_predicted"] for r in rows],
            [r["observed"] for r in rows],
            s=[400 * r["count"] / total for r in rows],
            alpha=0.3,
        )
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="estimated p(accepted | parent accepted)",
        ylabel="observed acceptance",
        title=title,
    )
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
