"""Two runs of `bench/cost_aware.py` side by side: each policy's throughput after / before.

For a change to the engine (not to one policy) on the same traces and grid: every row of the
"after" JSON is paired with the "before" row of the same cost model, batch, draw and policy, and
the ratio of their throughputs (whole run, and decode only) is averaged over the draws.

    python bench/compare_runs.py before.json after.json [--out compare.txt]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict


def _rows(path: str) -> dict[tuple, dict]:
    with open(path) as f:
        rows = json.load(f)["rows"]
    return {(r["workload"], r["cost_model"], r["batch_size"], r["draw"], r["policy"]): r for r in rows}


def compare(before: dict[tuple, dict], after: dict[tuple, dict]) -> list[str]:
    ratios = defaultdict(lambda: ([], []))
    # A steady-protocol row has no decode_throughput: its throughput is already the steady
    # window's decoding throughput (bench/cost_aware.py), so both columns read it.
    decoding = lambda row: row.get("decode_throughput", row["throughput"])  # noqa: E731
    for key, row in after.items():
        if key in before:
            whole, decode = ratios[key[:3] + key[4:]]
            whole.append(row["throughput"] / before[key]["throughput"])
            decode.append(decoding(row) / decoding(before[key]))
    lines, cell = [], None
    for (workload, cost_model, batch, policy), (whole, decode) in sorted(ratios.items()):
        if (workload, cost_model, batch) != cell:
            cell = (workload, cost_model, batch)
            lines.append(
                f"\n{workload}, {cost_model}, batch {batch}: after / before, mean (min-max) over draws"
            )
            lines.append(f"  {'policy':<62} {'whole run':>24} {'decode only':>24}")
        span = lambda v: f"{statistics.mean(v):.4f} ({min(v):.4f}-{max(v):.4f})"  # noqa: E731
        lines.append(f"  {policy:<62} {span(whole):>24} {span(decode):>24}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--out", help="also write the table here")
    args = parser.parse_args()
    lines = compare(_rows(args.before), _rows(args.after))
    emit("\n".join([f"before: {args.before}", f"after: {args.after}", *lines]) + "\n", args.out)


def emit(text: str, out: str | None) -> None:
    """Print the table, and write it to ``out`` too if given."""
    print(text, end="")
    if out:
        with open(out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
