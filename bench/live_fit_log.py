"""What the live flat loop's online cost fit reads, against lines through the steps it ran.

    python bench/live_fit_log.py        # tuning chat prompts (nothing held out), one round

    python bench/live_fit_log.py --source code

A diagnosis on the TUNING prompts (bench/prompts/tuning_{chat,code}.jsonl, the first 16), Gemma 3
270M float32, batch 8, flat loop, one thread: CostAwareTetris (online cost, with and without the
residual per step size, ``size_residual``) and ThresholdSD(0.5, 6), each once. For each: tokens
per CPU second (whole run and decoding only), steps, VSR, verified drafts a step; a
least-squares line through its steps' verification seconds against their computed tokens
(requests + verified drafts); the run split by the requests in the step (a full batch of 8, 4-7,
and the drain's 1-3: steps, verification seconds, tokens generated, drafts verified) and the
drain's median step seconds by computed tokens; for the cost-aware policy, its own fit at the end
of the run (KneeLatencyModel: intercept, slope and the slope's standard error). And the
calibration of the estimates it verified: by draft depth, the verified candidates, their mean
path estimate and the share accepted. One round: a diagnosis of what the fit and the estimates
read, not a timing. (Until 2026-12-02 10:00 UTC the second policy was the cost-aware one without
its fit's optimism, and the script read the chat prompts only.)
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cost_aware import MAX_DRAFT, drafter_for, ngram_estimator  # noqa: E402
from sim import bundled_prompts, load_target  # noqa: E402

from tetris_ext.cost_aware import CostAwareTetris  # noqa: E402
from tetris_ext.decoding import generate  # noqa: E402
from tetris_ext.policies import Autoregressive, ThresholdSD  # noqa: E402

PROMPTS = Path(__file__).resolve().parent / "prompts"
POLICIES = {
    "CostAwareTetris (online cost)": lambda: CostAwareTetris(MAX_DRAFT),
    "CostAwareTetris (online cost, no size residual)": lambda: CostAwareTetris(
        MAX_DRAFT, size_residual=False
    ),
    "ThresholdSD(0.5, 6)": lambda: ThresholdSD(0.5, 6),
}
PHASES = {"full batch (8)": (8, 8), "4-7 requests": (4, 7), "drain (1-3)": (1, 3)}


def print_phases(per_step: list[dict]) -> None:
    """The run split by the requests in each step, and the drain's step seconds by size."""
    for name, (low, high) in PHASES.items():
        steps = [x for x in per_step if low <= len(x["requests"]) <= high]
        print(
            f"  {name}: {len(steps)} steps, {sum(x['verify_seconds'] for x in steps):.2f} s verifying, "
            f"{sum(sum(x['generated']) for x in steps)} tokens generated, "
            f"{sum(sum(x['verified']) for x in steps)} drafts verified"
        )
    by_size = defaultdict(list)
    for x in per_step:
        if len(x["requests"]) <= 3:
            by_size[len(x["requests"]) + sum(x["verified"])].append(1e3 * x["verify_seconds"])
    print(
        "  drain steps by computed tokens (median ms, steps): "
        + ", ".join(f"{n}: {np.median(ms):.0f} ({len(ms)})" for n, ms in sorted(by_size.items()))
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", choices=("chat", "code"), default="chat", help="the tuning prompts")
    args = parser.parse_args()
    torch.set_num_threads(1)
    target, tokenizer = load_target("float32")
    prompts = bundled_prompts(tokenizer, limit=16, path=PROMPTS / f"tuning_{args.source}.jsonl")
    generate(target, prompts[:1], Autoregressive(), max_new_tokens=2)  # warm-up
    drafter_cfg = {"max_draft": MAX_DRAFT, "max_ngram": 4, "min_ngram": 1}
    for name, make_policy in POLICIES.items():
        policy = make_policy()
        drafter = drafter_for(drafter_cfg, ngram_estimator("gemma3-270m"))
        s = generate(
            target,
            prompts,
            policy,
            drafter,
            max_new_tokens=64,
            max_batch_size=8,
            eos_token_id=tokenizer.eos_token_id,
            flat=True,
        ).stats
        tokens = np.array([len(x["requests"]) + sum(x["verified"]) for x in s["per_step"]], dtype=float)
        seconds = np.array([x["verify_seconds"] + x["select_seconds"] for x in s["per_step"]])
        intercept, slope = np.polynomial.polynomial.polyfit(tokens, seconds, 1)
        decode = s["generated_tokens"] / (s["cpu_seconds"] - s["prefill_cpu_seconds"])
        print(
            f"{name}: {s['generated_tokens'] / s['cpu_seconds']:.1f} tok/CPU s ({decode:.1f} decoding), "
            f"{s['steps']} steps, VSR {s['accepted_tokens'] / max(1, s['verified_tokens']):.3f}, "
            f"{s['verified_tokens'] / s['steps']:.1f} verified a step; line through its steps "
            f"{1e3 * intercept:.1f} ms + {1e3 * slope:.2f} ms a token ({tokens.min():.0f}-{tokens.max():.0f} tokens)"
        )
        print_phases(s["per_step"])
        cand = s["candidates"]
        depth, predicted = np.array(cand["depth"]), np.array(cand["predicted"])
        accepted = np.array(cand["accepted"], dtype=float)
        print(
            "  verified by depth (count, mean estimate / accepted): "
            + ", ".join(
                f"{d}: {int((depth == d).sum())}, {predicted[depth == d].mean():.2f} / {accepted[depth == d].mean():.2f}"
                for d in sorted(set(depth.tolist()))
            )
        )
        fit = getattr(policy, "verify_latency", None)
        if fit is not None:
            print(
                f"  its fit: {1e3 * fit.intercept:.1f} ms + {1e3 * fit.slope:.2f} ms a token "
                f"(standard error {1e3 * fit.slope_error:.2f}), knee {fit.knee:.0f}"
            )


if __name__ == "__main__":
    main()
