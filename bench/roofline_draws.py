"""The recommended policy against the best baseline on the held-out roofline replays, draw by draw.

A burst replay's whole-run throughput turns on which requests finish in which step, so one draw
of the requests can put a policy 1-2% either side of where another draw puts it (bench/README.md,
"The drain and the probe"). `bench/cost_aware.py --draws N` replays the pooled held-out trace N
times per batch, each its own draw (draw 0: the requests of every single-draw run); this prints
the cost-aware rows' ratio to the best baseline of the same draw, per cell and draw, and counts
the cells and the cell-draws below it by more than ``TIE`` (a tie, as every earlier count used).

    python bench/roofline_draws.py bench/results/cost_aware_s37_draws_*.json [--out table.txt]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from compare_runs import emit
from compare_variants import VARIANT

TIE = 1e-5  # a ratio this close below 1 counts as level
GOAL_BATCHES = range(64, 513)  # issue 10's roofline goal: batch 64-512 (other batches printed, not counted)


def cells(rows: list[dict]) -> dict[tuple, dict[str, list[float]]]:
    """(cost model, batch) -> mode -> the cost-aware row's vs_best_baseline per draw (in draw
    order), from one run's held-out pooled rows."""
    out: dict[tuple, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["workload"] != "held-out pooled":
            continue
        match = VARIANT.match(r["policy"])
        if match and match[2] is None:  # the default cost-aware rows, online or known cost
            out[(r["cost_model"], r["batch_size"])][match[1]].append((r["draw"], r["vs_best_baseline"]))
    return {
        cell: {mode: [v for _, v in sorted(d)] for mode, d in modes.items()} for cell, modes in out.items()
    }


def below(ratio: float) -> bool:
    return ratio < 1 - TIE


def report(paths: list[Path]) -> list[str]:
    lines, totals = [], defaultdict(lambda: [0, 0, 0, 0])  # mode -> draws below, draws, cells below, cells
    for path in paths:
        lines += ["", f"{path}: vs the best baseline of the same draw, per draw; mean"]
        for (cost_model, batch), modes in sorted(cells(json.loads(path.read_text())["rows"]).items()):
            for mode, ratios in modes.items():
                mean = statistics.fmean(ratios)
                per_draw = " ".join(f"{v:.4f}" for v in ratios)
                lines.append(f"  {mode:<6} {cost_model:<36} {batch:4d}  {per_draw}  mean {mean:.4f}")
                if batch not in GOAL_BATCHES:
                    continue
                t = totals[mode]
                t[0], t[1] = t[0] + sum(map(below, ratios)), t[1] + len(ratios)
                t[2], t[3] = t[2] + below(mean), t[3] + 1
    lines.append("")
    for mode, (draws_below, draws, cells_below, n_cells) in totals.items():
        lines.append(
            f"{mode}, batch 64-512: below the best baseline (by > {TIE:g}) in {draws_below} of {draws} cell-draws; "
            f"in {cells_below} of {n_cells} cells by the mean over the draws"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="bench/cost_aware.py .json runs")
    ap.add_argument("--out", type=Path, help="also write the table here")
    args = ap.parse_args()
    emit("\n".join(report(args.runs)) + "\n", args.out)


if __name__ == "__main__":
    main()
