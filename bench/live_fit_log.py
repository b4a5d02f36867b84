"""What the live flat loop's online cost fit reads, against lines through the steps it ran.

    python bench/live_fit_log.py        # tuning chat prompts (nothing held out), one round

A diagnosis on the TUNING chat prompts (bench/prompts/tuning_chat.jsonl, the first 16), Gemma 3
270M float32, batch 8, flat loop, one thread: CostAwareTetris (online cost, with and without
its fit's optimism) and ThresholdSD(0.5, 6), each once. For each: tokens per CPU second (whole
run and decoding only), steps, VSR, verified drafts a step; a least-squares line through its
steps' verification seconds against their computed tokens (requests + verified drafts); and,
for the cost-aware policy, its own fit at the end of the run (KneeLatencyModel: intercept, slope
and the slope's standard error). And the calibration of the estimates it verified: by draft
depth, the verified candidates, their mean path estimate and the share accepted. One round: a
diagnosis of what the fit and the estimates read, not a timing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cost_aware import MAX_DRAFT, drafter_for, ngram_estimator  # noqa: E402
from sim import bundled_prompts, load_target  # noqa: E402

from tetris_ext.cost_aware import CostAwareTetris  # noqa: E402
from tetris_ext.decoding import generate  # noqa: E402
from tetris_ext.policies import Autoregressive, ThresholdSD  # noqa: E402

PROMPTS = Path(__file__).resolve().parent / "prompts" / "tuning_chat.jsonl"
POLICIES = {
    "CostAwareTetris (online cost)": lambda: CostAwareTetris(MAX_DRAFT),
    "CostAwareTetris (online cost, optimism 0)": lambda: CostAwareTetris(MAX_DRAFT, optimism=0.0),
    "ThresholdSD(0.5, 6)": lambda: ThresholdSD(0.5, 6),
}


def main() -> None:
    torch.set_num_threads(1)
    target, tokenizer = load_target("float32")
    prompts = bundled_prompts(tokenizer, limit=16, path=PROMPTS)
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
