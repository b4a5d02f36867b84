"""Bring the stored n-gram traces up to the current drafter, without running a model.

    python bench/redraft_traces.py            # redraft every stale trace under results/traces
    python bench/redraft_traces.py --check    # only list them (exit 1 if any is stale)

A trace's continuation is the target's greedy output, which does not depend on the drafter,
so `tetris_ext.sim.redraft` gives the trace that recording with today's `NgramDrafter` would
give (same settings: max_draft, max_ngram, min_ngram). A trace is stale when that differs from
what it stores (drafts, features, accept_len or drafter record; tests/test_bench_smoke.py fails
on a stale one, so a change to the drafter comes with its traces). Each stale trace is
rewritten in place; the table printed shows what changed: positions with a draft, drafts per
position, and the tokens a step would accept with every draft verified (``accept_len``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, format_table  # noqa: E402
from tetris_ext.drafters import NgramDrafter  # noqa: E402
from tetris_ext.sim import Trace, redraft  # noqa: E402

TRACES = RESULTS_DIR / "traces"
DRAFT_FIELDS = ("draft_tokens", "draft_features", "accept_len")


def ngram_traces():
    """(path, trace) of every stored trace of the n-gram drafter (not the confidence caches)."""
    for path in sorted(TRACES.glob("*.npz")):
        if not path.name.endswith(".target_confidence.npz"):
            trace = Trace.load(path)
            if trace.drafter.get("kind") == "ngram":
                yield path, trace


def redrafted_if_stale(trace: Trace) -> Trace | None:
    """The trace as today's NgramDrafter drafts it, or None when it already is."""
    cfg = trace.drafter
    fresh = redraft(trace, NgramDrafter(cfg["max_draft"], cfg["max_ngram"], cfg["min_ngram"]))
    same = fresh.drafter == cfg and all(
        np.array_equal(getattr(fresh, name), getattr(trace, name)) for name in DRAFT_FIELDS
    )
    return None if same else fresh


def summary(trace: Trace) -> dict:
    """Means over the output positions of every request (up to its output length)."""
    T = trace.max_new_tokens
    inside = trace.out_len[:, None] > range(T)
    drafted = (trace.draft_tokens >= 0).sum(-1)
    return {
        "with draft": float(((drafted > 0) & inside).sum() / inside.sum()),
        "drafts": float(drafted[inside].mean()),
        "accept_len": float(trace.accept_len[inside].mean()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="list stale traces, change nothing")
    args = parser.parse_args()
    rows = []
    for path, trace in ngram_traces():
        fresh = redrafted_if_stale(trace)
        if fresh is None:
            continue
        row = {"trace": path.name, **{f"{k} before": v for k, v in summary(trace).items()}}
        row.update({f"{k} after": v for k, v in summary(fresh).items()})
        if not args.check:
            fresh.save(path)
        rows.append(row)
    if not rows:
        print("every n-gram trace is drafted by the current rule")
        return 0
    columns = [(k, k) for k in rows[0]]
    print(format_table(rows, columns))
    return 1 if args.check else 0


if __name__ == "__main__":
    sys.exit(main())
