"""What a tree of n-gram drafts could add over the drafter's chain: how often the next token is a
second or third continuation that the context offers, where the drafter's first one is wrong.

Offline, teacher-forced on recorded greedy outputs (the traces' prompts and continuations): at
every position of every output, the continuations of the context's recurring suffixes for the
next token, ranked as a tree drafter would take them: the longest recurring suffix first (its
most recent occurrence's follower, the drafter's own draft, then its other followers by count,
ties to the most recent), then the followers of shorter suffixes not yet ranked. Reported per
trace: positions without any continuation, and how often the target's token is the first, within
the first two, within the first three; and, where the first exists and is wrong, how often the
second is right: the acceptance probability of the cheapest extra branch a tree would verify.

    python bench/ngram_alternatives.py   # held-out Gemma traces (a diagnosis; nothing is chosen
                                         # on it); results/ngram_alternatives.{json,txt}
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np

from tetris_ext.drafters import NgramIndex

RESULTS = Path(__file__).resolve().parent / "results"
HELD_OUT_TRACES = [
    f"traces/estimates_gemma3-270m-bf16_{source}_d8_t64.npz" for source in ("code", "chat", "rewrite")
]


def ranked_continuations(index: NgramIndex) -> list[int]:
    """The next-token continuations the context offers, best first (module doc)."""
    context, ranked = index.tokens, []
    for n in range(min(index.max_ngram, len(context) - 1), index.min_ngram - 1, -1):
        positions = index.follower_positions(n)
        if not positions:
            continue
        counts = Counter(context[p] for p in positions)
        latest = {context[p]: p for p in positions}  # positions increase: the last one wins
        by_count = sorted(counts, key=lambda token: (-counts[token], -latest[token]))
        for token in [context[positions[-1]], *by_count]:
            if token not in ranked:
                ranked.append(token)
    return ranked


def score(path: Path) -> dict:
    trace = np.load(path, allow_pickle=True)
    starts = np.concatenate([[0], np.cumsum(trace["prompt_lens"])])
    counts = Counter()
    for r in range(len(trace["prompt_lens"])):
        index = NgramIndex(4, 1)
        index.extend(trace["prompt_tokens"][starts[r] : starts[r + 1]].tolist())
        for token in trace["continuation"][r][: trace["out_len"][r]].tolist():
            ranked = ranked_continuations(index)
            counts["positions"] += 1
            counts["none"] += not ranked
            for top in (1, 2, 3):
                counts[f"top{top}"] += token in ranked[:top]
            if ranked and ranked[0] != token:
                counts["first_wrong"] += 1
                counts["second_right"] += ranked[1:2] == [token]
            index.extend([token])
    n = counts["positions"]
    return {
        "trace": str(path.relative_to(RESULTS)),
        "positions": n,
        "no_continuation": counts["none"] / n,
        **{f"top{top}": counts[f"top{top}"] / n for top in (1, 2, 3)},
        "second_right_where_first_wrong": counts["second_right"] / max(1, counts["first_wrong"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", nargs="+", default=HELD_OUT_TRACES, help="under bench/results/")
    ap.add_argument("--out", type=Path, default=RESULTS / "ngram_alternatives")
    args = ap.parse_args()
    rows = [score(RESULTS / trace) for trace in args.traces]
    lines = [
        f"{row['trace']}  positions {row['positions']}  none {row['no_continuation']:.3f}  top1 {row['top1']:.3f}"
        f"  top2 {row['top2']:.3f}  top3 {row['top3']:.3f}  second right where first wrong "
        f"{row['second_right_where_first_wrong']:.3f}"
        for row in rows
    ]
    print("\n".join(lines))
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    args.out.with_suffix(".txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
