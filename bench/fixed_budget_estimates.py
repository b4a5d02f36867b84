"""Which n-gram estimator should NgramDrafter default to? Replays on the TUNING traces only.

    python bench/fixed_budget_estimates.py               # -> results/fixed_budget_estimates.{json,txt}
    python bench/fixed_budget_estimates.py --draws 5     # + 5 resampled request sets per cell

The bundled traces (the tuning part: python/tetris_ext/data/prompts.jsonl, recorded with Gemma 3
270M bf16 and SmolLM2-135M-Instruct f32; bench/estimates.py; no held-out trace is read) split by
prompt group as bench/cost_aware_caution.py splits them: code (code-edit, code-free,
code-pattern) and chat-like (the rest), and all 32 prompts.

For each estimator in the n-gram drafter (AcceptanceCalibration, the old default;
NgramLogistic() without token classes; NgramLogistic with the model's token classes):

1. the policies whose selection reads the estimates, and StandardSD(3), whose selection does
   not (the same row for every estimator: a check): Tetris(3, 2) (the fixed budget: StandardSD(3)'s
   verified count, batch-wide ranking), ThresholdSD(0.7, 6) and CostAwareTetris(8) (online cost fit), replayed
   at batch 8 with every request waiting at t=0 under two CPU cost models: the fitted padded
   loop (bench/results/cost_model_cpu_gemma3-270m-bf16.json) and the flat loop's line
   (bench/cost_aware.flat_cpu_line); steps, VSR and throughput over StandardSD(3)'s;
   with --draws, also the mean over resampled request sets (with replacement, 4 x the batch);
   and Tetris(3, 2) with the true outcomes as its estimates (``replay(oracle=True)``): the VSR
   no estimator can beat under this budget; and Tetris(3, 2, full_budget), k x B candidates
   every step (the budget rule before 2026-11-30: the slots StandardSD(3) leaves empty when
   drafts run short go to other requests' deeper drafts). Tetris(3, 2) verifies StandardSD(3)'s
   count each step, so its VSR against StandardSD(3)'s is the ranking's share alone;
2. the estimates themselves (tetris_ext.heldout.collect: every drafted token verified): token
   Brier score, AUC of the token estimates and AUC of the path estimates TETRIS ranks by.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cost_aware import CPU_COST_PATH, drafter_for, flat_cpu_line  # noqa: E402
from cost_aware_caution import CODE  # noqa: E402
from estimates import SMOLLM2_SOURCES, SOURCES, load_token_classes, prompt_categories, subset  # noqa: E402

from common import RESULTS_DIR, format_table, run_metadata  # noqa: E402
from tetris_ext import heldout  # noqa: E402
from tetris_ext.calibration import AcceptanceCalibration  # noqa: E402
from tetris_ext.cost_aware import CostAwareTetris  # noqa: E402
from tetris_ext.cost_models import LinearCostModel  # noqa: E402
from tetris_ext.estimators import NgramLogistic  # noqa: E402
from tetris_ext.policies import StandardSD, Tetris, ThresholdSD  # noqa: E402
from tetris_ext.sim import Trace, replay  # noqa: E402

MODELS = {"gemma3-270m": SOURCES["bundled"], "smollm2-135m": SMOLLM2_SOURCES["bundled"]}
BATCH = 8
BASELINE = "StandardSD(3)"
ORACLE, ORACLE_POLICY = "oracle (true outcomes)", "Tetris(3, 2)"


def estimators(model: str) -> dict:
    """label -> factory of a fresh estimator."""
    classes = load_token_classes(model)
    return {
        "AcceptanceCalibration": AcceptanceCalibration,
        "NgramLogistic": NgramLogistic,
        "NgramLogistic (token classes)": lambda: NgramLogistic(token_classes=classes),
    }


def policies(padded: bool) -> dict:
    return {
        BASELINE: lambda: StandardSD(3),
        "Tetris(3, 2)": lambda: Tetris(3, 2),
        "Tetris(3, 2, full_budget)": lambda: Tetris(3, 2, full_budget=True),
        "ThresholdSD(0.7, 6)": lambda: ThresholdSD(0.7, 6),
        "CostAwareTetris(8)": lambda: CostAwareTetris(8, padded),
    }


def groups(trace: Trace) -> dict[str, Trace]:
    categories = prompt_categories("bundled")
    if len(categories) != trace.num_requests:
        raise ValueError(
            f"the bundled trace has {trace.num_requests} requests, the prompt file {len(categories)}"
        )
    return {
        "code": subset(trace, [r for r, c in enumerate(categories) if c in CODE]),
        "chat-like": subset(trace, [r for r, c in enumerate(categories) if c not in CODE]),
        "all": trace,
    }


def replay_cell(trace: Trace, make_policy, estimator, cost_model, draws: int, oracle: bool = False) -> dict:
    """One policy + estimator + cost model: every request once (draw 0), then ``draws``
    resampled request sets. ``oracle``: the true outcomes as the estimates (the ceiling)."""
    runs = []
    for draw in range(draws + 1):
        m = replay(
            trace,
            make_policy(),
            BATCH,
            cost_model,
            num_requests=None if draw == 0 else 4 * BATCH,
            seed=draw,
            drafter=drafter_for(trace, estimator),
            keep_steps=False,
            oracle=oracle,
        ).metrics
        runs.append(m)
    first = runs[0]
    return {
        "steps": first["steps"],
        "vsr": first["verification_success_rate"],
        "accepted_per_step": first["accepted_per_step"],
        "verified_per_step": first["verified_per_step"],
        "throughput": first["throughput_tokens_per_s"],
        "draw_throughputs": [m["throughput_tokens_per_s"] for m in runs[1:]],
        "draw_vsrs": [m["verification_success_rate"] for m in runs[1:]],
    }


def run_model(model: str, draws: int) -> tuple[list[dict], list[dict]]:
    trace = Trace.load(MODELS[model])
    cost_models = {
        "cpu padded (fitted)": (LinearCostModel.load(CPU_COST_PATH), True),
        "cpu flat (line)": (flat_cpu_line(), False),
    }
    makers = estimators(model)
    rows, quality = [], []
    for group, part in groups(trace).items():
        for est_name, make in makers.items():
            scores = heldout.score(heldout.collect(part, make(), BATCH))
            quality.append(
                {"model": model, "group": group, "estimator": est_name}
                | {k: scores[k] for k in ("tested_tokens", "acceptance_rate", "brier", "auc", "path_auc")}
            )
        for cost_name, (cost_model, padded) in cost_models.items():
            cells = []
            for est_name, make in makers.items():
                for name, make_policy in policies(padded).items():
                    cell = replay_cell(part, make_policy, make, cost_model, draws)
                    cells.append(
                        {"model": model, "group": group, "cost_model": cost_name}
                        | {"estimator": est_name, "policy": name}
                        | cell
                    )
            cell = replay_cell(part, policies(padded)[ORACLE_POLICY], None, cost_model, draws, oracle=True)
            cells.append(
                {"model": model, "group": group, "cost_model": cost_name}
                | {"estimator": ORACLE, "policy": ORACLE_POLICY}
                | cell
            )
            _ratios(cells)
            rows += cells
        print(f"{model} / {group}: done", file=sys.stderr, flush=True)
    return rows, quality


def _ratios(cells: list[dict]) -> None:
    """Throughput over StandardSD(3)'s (draw 0, and the mean over draws of the per-draw ratios);
    StandardSD(3) verifies its first 3 drafts whatever the estimates, so its rows agree."""
    sd3 = {(c["steps"], c["vsr"], c["throughput"]) for c in cells if c["policy"] == BASELINE}
    if len(sd3) != 1:
        raise AssertionError(f"{BASELINE} differs between estimators: {sd3}")
    for cell in cells:
        base = next(c for c in cells if c["policy"] == BASELINE)  # the same for every estimator
        cell["vs_sd3"] = cell["throughput"] / base["throughput"]
        cell["vsr_minus_sd3"] = cell["vsr"] - base["vsr"]
        pairs = list(zip(cell["draw_throughputs"], base["draw_throughputs"]))
        cell["vs_sd3_draws_mean"] = statistics.mean(a / b for a, b in pairs) if pairs else None
        vsr_pairs = list(zip(cell["draw_vsrs"], base["draw_vsrs"]))
        cell["vsr_minus_sd3_draws_mean"] = statistics.mean(a - b for a, b in vsr_pairs) if vsr_pairs else None


COLUMNS = [
    ("model", "model"),
    ("group", "group"),
    ("cost_model", "cost"),
    ("policy", "policy"),
    ("estimator", "estimator"),
    ("steps", "steps"),
    ("accepted_per_step", "acc/step"),
    ("verified_per_step", "ver/step"),
    ("vsr", "VSR"),
    ("vsr_minus_sd3", "VSR-SD3"),
    ("throughput", "tok/s"),
    ("vs_sd3", "vs SD3"),
    ("vs_sd3_draws_mean", "vs SD3 (draws)"),
    ("vsr_minus_sd3_draws_mean", "VSR-SD3 (draws)"),
]
QUALITY_COLUMNS = [
    (k, k)
    for k in ("model", "group", "estimator", "tested_tokens", "acceptance_rate", "brier", "auc", "path_auc")
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument(
        "--draws", type=int, default=0, help="resampled request sets per cell (4 x the batch each)"
    )
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "fixed_budget_estimates")
    args = ap.parse_args(argv)
    rows, quality = [], []
    for model in args.models:
        r, q = run_model(model, args.draws)
        rows, quality = rows + r, quality + q
    shown = [r for r in rows if r["policy"] != BASELINE or r["estimator"] == "AcceptanceCalibration"]
    text = (
        f"tuning traces only (bundled prompts), batch {BATCH}, every request at t=0; "
        f"ratios against {BASELINE} (estimator-independent); draws: {args.draws}\n\n"
        + format_table(shown, COLUMNS)
        + "\n\nestimates (every drafted token verified): token Brier / AUC, path AUC\n\n"
        + format_table(quality, QUALITY_COLUMNS)
    )
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".txt").write_text(text + "\n")
    payload = {"meta": run_metadata("cpu"), "draws": args.draws, "rows": rows, "estimates": quality}
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
