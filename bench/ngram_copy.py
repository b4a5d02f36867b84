"""Where an n-gram draft comes from: the continuation of the suffix's most recent earlier occurrence,
cut at the context's end (the rule until 2026-11-30), the same continued as an overlapping copy
(`drafters.overlapping_copy`, the rule since), or the earliest occurrence (vLLM's n-gram proposer).

Offline, on recorded greedy outputs (the traces' prompts and continuations; tuning traces by
default): at every position of every output, the longest suffix match (4 down to 1 tokens) as
`NgramIndex` finds it, a chain of k drafts from each rule, and how many of them the target's own
continuation accepts (teacher-forced: the same positions for every rule).

    python bench/ngram_copy.py    # tuning traces; results/ngram_copy.{json,txt}
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from tetris_ext.drafters import NgramIndex, overlapping_copy

RESULTS = Path(__file__).resolve().parent / "results"
TUNING_TRACES = [
    "traces/gemma3-270m-bf16_ngram_d8_t64.npz",  # Gemma, bundled prompts
    "traces/tuning_gemma3-270m-bf16_chat_d8_t64.npz",
    "traces/tuning_gemma3-270m-bf16_code_d8_t64.npz",
    "traces/estimates_smollm2-135m-f32_bundled_d8_t64.npz",  # SmolLM2, bundled prompts
]
RULES = ("recent, cut", "recent, overlapping copy", "earliest")


def drafts(index: NgramIndex, k: int) -> dict[str, list[int]]:
    """Each rule's k drafts for the index's context (none when no suffix recurs)."""
    context, L = index.tokens, len(index.tokens)
    for n in range(min(index.max_ngram, L - 1), index.min_ngram - 1, -1):
        positions = index.follower_positions(n)
        if positions:
            recent, earliest = positions[-1], positions[0]
            return {
                "recent, cut": context[recent : recent + k],
                "recent, overlapping copy": overlapping_copy(context, recent, k),
                "earliest": context[earliest : earliest + k],
            }
    return {rule: [] for rule in RULES}


def accepted(draft: list[int], truth: list[int]) -> int:
    a = 0
    while a < min(len(draft), len(truth)) and draft[a] == truth[a]:
        a += 1
    return a


def score(path: Path, k: int) -> dict:
    trace = np.load(path, allow_pickle=True)
    starts = np.concatenate([[0], np.cumsum(trace["prompt_lens"])])
    totals = {rule: {"accepted": 0, "drafted": 0} for rule in RULES}
    positions = 0
    for r in range(len(trace["prompt_lens"])):
        index = NgramIndex(4, 1)
        index.extend(trace["prompt_tokens"][starts[r] : starts[r + 1]].tolist())
        output = trace["continuation"][r][: trace["out_len"][r]].tolist()
        for t in range(len(output) - 1):
            index.extend(output[t : t + 1])
            for rule, draft in drafts(index, k).items():
                totals[rule]["accepted"] += accepted(draft, output[t + 1 :])
                totals[rule]["drafted"] += len(draft)
            positions += 1
    return {"trace": str(path.relative_to(RESULTS)), "k": k, "positions": positions, "rules": totals}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", nargs="+", default=TUNING_TRACES, help="under bench/results/")
    ap.add_argument("--k", type=int, nargs="+", default=[3, 5, 8])
    ap.add_argument("--out", type=Path, default=RESULTS / "ngram_copy")
    args = ap.parse_args()
    rows = [score(RESULTS / trace, k) for trace in args.traces for k in args.k]
    lines = []
    for row in rows:
        base = row["rules"]["recent, cut"]["accepted"]
        cells = [
            f"{rule}: {v['accepted']} ({v['accepted'] / max(1, base):.3f}x), drafted {v['drafted']}"
            for rule, v in row["rules"].items()
        ]
        lines.append(
            f"{row['trace']}  k={row['k']}  positions {row['positions']}  accepted: " + "; ".join(cells)
        )
    print("\n".join(lines))
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    args.out.with_suffix(".txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
