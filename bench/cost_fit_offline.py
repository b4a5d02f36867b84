"""Variants of the online step-cost fit (KneeLatencyModel) replayed on per-step logs, offline.

    python bench/cost_fit_offline.py    # -> results/cost_fit_offline.{json,txt}

Reads the logs of live flat-loop runs on the TUNING prompts (`python
bench/cost_aware_live_tuning.py --fit-log bundled [--fit-k k]`,
results/cost_aware*fit_log_bundled*.json: the cost-aware policy with the fit before and after
the knee test, and StandardSD(2, 4, 6), so steps of many sizes) and feeds each log's steps, in
order, to every variant (forgetting x knee evidence x clipping). Deterministic: no model runs.
Per variant, pooled over the logs (steps from the 6th on):

- one-step-ahead error of the verification seconds (the fit of the steps before, predicting
  this one): median and mean absolute error in ms;
- the floor it would set (goodput x marginal seconds, as CostAwareTetris._choose_prefix with
  the default margin, on the logged ranked estimates of that step): the median step-to-step
  change, its spread (the 10th-90th percentile range) over a log, and its mean absolute
  difference from the floor of the reference cost below (the step's estimates move the floor
  too: the reference's own floor spread is printed above the table);
- decision regret: the goodput lost by the variant's chosen prefix against the best prefix of
  a reference cost: per log, the least-squares fit of all its steps to seconds = a + b tokens +
  c tokens x context (the attention's work; outliers beyond 3 sigma dropped, a hindsight
  model no online fit can have), with the policy's own margin. Mean regret in percent.
The chosen variant becomes the default of CostAwareTetris's fit; bench/README.md ("fit-log").
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, format_table, run_metadata  # noqa: E402
from tetris_ext.cost_aware import MARGIN  # noqa: E402
from tetris_ext.policies import KneeLatencyModel  # noqa: E402

SKIP = 5  # the first steps: no fit can know the cost yet


def reference_cost(steps: list[dict]):
    """Hindsight seconds(tokens, context) of one log: a + b t + c t ctx, 3-sigma outliers out."""
    t = np.array([s["tokens"] for s in steps], dtype=float)
    ctx = np.array([s["context_tokens"] for s in steps], dtype=float) / 1000
    y = np.array([s["seconds"] for s in steps])
    X = np.c_[np.ones_like(t), t, t * ctx]
    keep = np.ones(len(y), dtype=bool)
    for _ in range(3):
        coef = np.linalg.lstsq(X[keep], y[keep], rcond=None)[0]
        residual = y - X @ coef
        keep = np.abs(residual) <= 3 * residual[keep].std()
    return lambda tokens, context: coef[0] + coef[1] * tokens + coef[2] * tokens * context / 1000


def choose(B: int, ranked: np.ndarray, seconds: np.ndarray, margin: float) -> tuple[int, float, np.ndarray]:
    """CostAwareTetris._choose_prefix on step seconds ``seconds[m]`` for m = 0..len(ranked):
    (m, floor, goodput with the margin)."""
    latency = seconds + margin * np.clip(seconds - seconds[0], 0, None)
    goodput = (B + np.concatenate([[0.0], np.cumsum(ranked)])) / latency
    m = int(goodput.argmax())
    return m, float(goodput[m] * (latency[min(m + 1, len(ranked))] - latency[m])), goodput


def replay(steps: list[dict], make_fit) -> dict:
    """One variant on one log: per step (from SKIP on) the prediction error, floor, regret."""
    fit, truth, draft = make_fit(), reference_cost(steps), 0.0
    errors, floors, reference_floors, floor_errors, regrets = [], [], [], [], []
    for i, s in enumerate(steps):
        B, ranked = s["requests"], np.array(s.get("ranked", []), dtype=float)
        if i >= SKIP:
            errors.append(abs(float(fit.predict(s["tokens"])) - s["seconds"]))
            trusted = ranked[: max(0, 2 * max(B, fit.max_tokens) - B)]  # CostAwareTetris._trusted, growth 2
            sizes = B + np.arange(len(trusted) + 1)
            m, floor, _ = choose(B, trusted, fit.predict(torch.tensor(sizes)).numpy() + draft, MARGIN)
            _, reference_floor, best = choose(B, trusted, truth(sizes, s["context_tokens"]) + draft, MARGIN)
            floors.append(floor)
            reference_floors.append(reference_floor)
            floor_errors.append(abs(floor - reference_floor))
            regrets.append(1 - best[m] / best.max())
        fit.observe(s["tokens"], s["tokens"], s["seconds"])
        draft = s["draft_seconds"] if i == 0 else 0.8 * draft + 0.2 * s["draft_seconds"]
    floors = np.array(floors)
    return {
        "reference_floor_range": float(
            np.percentile(reference_floors, 90) - np.percentile(reference_floors, 10)
        ),
        "errors": errors,
        "regrets": regrets,
        "floor_change": np.abs(np.diff(floors)).tolist(),
        "floor_errors": floor_errors,
        "floor_range": float(np.percentile(floors, 90) - np.percentile(floors, 10)),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--logs", type=Path, nargs="+", default=sorted(RESULTS_DIR.glob("cost_aware*fit_log_bundled*.json"))
    )
    ap.add_argument("--forget", type=float, nargs="+", default=[0.0, 0.02, 0.05, 0.1])
    ap.add_argument("--knee-evidence", type=float, nargs="+", default=[0.0, 10.0, 30.0, 100.0])
    ap.add_argument("--clip", type=float, nargs="+", default=[0.0, 3.0, 2.0], help="0: no clipping")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "cost_fit_offline")
    args = ap.parse_args(argv)
    logs = {path.stem: json.loads(path.read_text())["steps"] for path in args.logs}
    rows = []
    for forget, evidence, clip in itertools.product(args.forget, args.knee_evidence, args.clip):

        def make_fit(forget=forget, evidence=evidence, clip=clip):
            return KneeLatencyModel(forget=forget, knee_evidence=evidence, clip=clip or None)

        runs = [replay(steps, make_fit) for steps in logs.values()]
        errors = np.concatenate([r["errors"] for r in runs]) * 1e3
        rows.append(
            {
                "forget": forget,
                "knee_evidence": evidence,
                "clip": clip,
                "median_abs_error_ms": float(np.median(errors)),
                "mean_abs_error_ms": float(errors.mean()),
                "floor_median_change": float(np.median(np.concatenate([r["floor_change"] for r in runs]))),
                "floor_range_mean": float(np.mean([r["floor_range"] for r in runs])),
                "floor_abs_error": float(np.mean(np.concatenate([r["floor_errors"] for r in runs]))),
                "regret_pct": float(np.mean(np.concatenate([r["regrets"] for r in runs])) * 100),
                "regret_pct_per_log": [float(np.mean(r["regrets"]) * 100) for r in runs],
            }
        )
        print(rows[-1], flush=True)
    columns = [
        ("forget", "forget"),
        ("knee_evidence", "knee evidence"),
        ("clip", "clip (sigmas)"),
        ("median_abs_error_ms", "median |err| ms"),
        ("mean_abs_error_ms", "mean |err| ms"),
        ("floor_median_change", "floor change"),
        ("floor_range_mean", "floor p10-p90"),
        ("floor_abs_error", "floor |err|"),
        ("regret_pct", "regret %"),
    ]
    table = format_table(rows, columns)
    print(table)
    # The hindsight cost's own floor moves with each step's estimates: the spread no fit removes.
    reference = float(
        np.mean([replay(steps, KneeLatencyModel)["reference_floor_range"] for steps in logs.values()])
    )
    meta = run_metadata("cpu") | {"logs": list(logs), "skip": SKIP, "margin": MARGIN}
    meta["reference_floor_range_mean"] = reference
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    summary = f"logs: {', '.join(logs)}\nthe hindsight cost's own floor p10-p90: {reference:.3g}"
    args.out.with_suffix(".txt").write_text(f"{meta['command']}\n{summary}\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
