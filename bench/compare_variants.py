"""Cost-aware variants of one `bench/cost_aware.py` run against its default rows.

A run with --drain, --end-hazard or a tuning flag (--tune-margin, ...) holds, beside
"CostAwareTetris (online cost) + <estimator>", rows "CostAwareTetris (online cost, <variant>) +
<estimator>" (and the same for the known cost). Each variant row is paired with the default row
of the same cost, cost model, batch and draw, and its whole-run throughput over the default's
is printed per draw, with the mean and the worst over the cost models at batch 8-128 (where the
variants differ; at 256 and 512 the roofline step is compute bound and they tie).

    python bench/compare_variants.py run.json [more.json ...] [--against VARIANT] [--out table.txt]

--against: pair with that variant's rows instead (e.g. "end hazard off": a feature now on by
default against the run without it).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict

from compare_runs import emit

VARIANT = re.compile(r"^CostAwareTetris \((online|known) cost(?:, (.+?))?\) \+ (.+)$")


def ratios(rows: list[dict], against: str | None = None) -> dict[tuple, float]:
    """(variant, cost, cost model, batch, draw) -> its throughput over the default row's (or,
    with ``against``, that variant's) of the same cost, cost model, batch and draw."""
    reference = against or "default"
    found = {}
    for r in rows:
        match = VARIANT.match(r["policy"])
        if match:
            cost, variant, _ = match.groups()
            found[(variant or "default", cost, r["cost_model"], r["batch_size"], r["draw"])] = r["throughput"]
    return {
        key: value / found[(reference, *key[1:])]
        for key, value in found.items()
        if key[0] != reference and (reference, *key[1:]) in found
    }


def table(path: str, against: str | None = None) -> list[str]:
    with open(path) as f:
        found = ratios(json.load(f)["rows"], against)
    lines = [f"\n{path}: variant / {against or 'default'}, whole-run throughput, per draw"]
    cells = defaultdict(list)
    for (variant, cost, model, batch, _draw), ratio in sorted(found.items()):
        cells[(variant, cost, model, batch)].append(ratio)
    summary = defaultdict(list)
    for (variant, cost, model, batch), per_draw in cells.items():
        draws = " ".join(f"{r:.4f}" for r in per_draw)
        lines.append(f"  {variant:<20} {cost:<7} {model:<40} {batch:>4}  {draws}")
        if batch <= 128:
            summary[(variant, cost)] += per_draw
    for (variant, cost), values in sorted(summary.items()):
        lines.append(
            f"  {variant:<20} {cost:<7} batch <= 128: mean {statistics.mean(values):.4f}, "
            f"worst {min(values):.4f}, best {max(values):.4f}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--against", help="pair with this variant's rows instead of the default's")
    parser.add_argument("--out", help="also write the tables here")
    args = parser.parse_args()
    emit("\n".join(line for path in args.runs for line in table(path, args.against)) + "\n", args.out)


if __name__ == "__main__":
    main()
