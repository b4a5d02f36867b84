"""The online-cost CostAwareTetris on the live flat loop, on the TUNING prompts: margins, rounds.

    python bench/cost_aware_live_tuning.py --repeat 2    # -> results/cost_aware_live_tuning.{json,txt}
    python bench/cost_aware_live_tuning.py --repeat 4 --margins 0.3 --fits before knee default \
      --out bench/results/cost_aware_livefit_tuning2   # the online fit's variants side by side
    python bench/cost_aware_live_tuning.py --fit-log chat   # -> results/cost_aware_fit_log_chat.json
    python bench/cost_aware_live_tuning.py --fit-log tuning_chat   # prompts/tuning_chat.jsonl
    python bench/cost_aware_live_tuning.py --fit-log bundled --fit-k 3  # -> ..._fit_log_bundled_sd3.json

Gemma 3 270M bf16, one thread, batch 8, the bundled prompt set (the tuning part: nothing here is
held out), 64 new tokens, `generate(..., flat=True)`. StandardSD(3..5) and
`CostAwareTetris(8, padded=False, margin=m)` (its online fit as each of --fits: FITS) +
NgramLogistic with Gemma's token classes, every
policy once per round, rounds back to back. Reports decode tokens per CPU second (prefill CPU
excluded), steps and VSR per round: the spread between rounds of the same policy shows how much
its choices depend on the measured step times.

--fit-log SOURCE: instead, one run of the default policy (or StandardSD(k) with --fit-k k) on
that prompt set (bundled: the tuning prompts), logging per step the tokens it computed, the
measured wall and thread CPU seconds of verification, the context, the ranked estimates of the
candidates, and for the cost-aware policy its online fit (intercept, slope past the knee, knee)
and the floor and budget it chose; bench/cost_fit_offline.py replays such logs through fit
variants.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cost_aware import ngram_estimator  # noqa: E402
from sim import bundled_prompts, load_target  # noqa: E402

from common import RESULTS_DIR, decode_summary, format_table, run_metadata  # noqa: E402
from tetris_ext.cost_aware import FIT_CLIP, FIT_FORGET, KNEE_EVIDENCE, CostAwareTetris  # noqa: E402
from tetris_ext.decoding import LiveTarget, generate  # noqa: E402
from tetris_ext.drafters import NgramDrafter  # noqa: E402
from tetris_ext.policies import KneeLatencyModel, StandardSD  # noqa: E402


def fit_log(target, tokenizer, source: str, k: int | None, estimator, out: Path) -> None:
    """One run on the flat loop, logged per step: CostAwareTetris(8, padded=False) (k None) or
    StandardSD(k) (steps of other sizes, for fitting offline), both drafting with ``estimator``."""
    if source == "bundled":
        prompts = bundled_prompts(tokenizer)
    else:
        name = source + ".jsonl" if source.startswith("tuning_") else f"estimates_{source}.jsonl"
        path = Path(__file__).resolve().parent / "prompts" / name
        prompts = [
            tokenizer(json.loads(line)["prompt"]).input_ids for line in path.read_text().splitlines() if line
        ]
    policy, log, pending = (CostAwareTetris(8, padded=False) if k is None else StandardSD(k)), [], {}
    choose, observe, verify = policy.choose, policy.observe, LiveTarget.verify

    def logged_choose(proposal):
        probs = torch.nan_to_num(proposal.cum_logprobs.double().exp() * (proposal.tokens >= 0))
        ranked = probs.reshape(-1).sort(descending=True).values
        pending["ranked"] = [round(float(p), 4) for p in ranked[ranked > 0]]
        return choose(proposal)

    def timed_verify(self, requests, *args, **kwargs):
        # The step's thread CPU seconds and its context (the attention's other factor), which the
        # engine's feedback (wall seconds) does not carry.
        start = time.thread_time()
        result = verify(self, requests, *args, **kwargs)
        pending["verify_cpu_s"] = time.thread_time() - start
        pending["context_tokens"] = sum(len(r.tokens) for r in requests)
        return result

    def logged_observe(feedback):
        observe(feedback)
        step = {
            "requests": feedback.num_requests,
            "tokens": feedback.num_requests + int(feedback.verified.sum()),
            "accepted": int(feedback.accepted.sum()),
            "seconds": feedback.verify_seconds,
            "draft_seconds": feedback.draft_seconds,
            **pending,
        }
        if k is None:
            fit = policy.verify_latency
            step |= {
                "intercept_s": fit.intercept,
                "slope_s_per_token": fit.slope,
                "knee_tokens": fit.knee,
                "floor": policy.last_floor,
                "budget": policy.last_budget,
            }
        log.append(step)
        pending.clear()

    policy.choose, policy.observe, LiveTarget.verify = logged_choose, logged_observe, timed_verify
    try:
        drafter = NgramDrafter(8, 4, 1, calibration=estimator())
        kwargs = dict(max_new_tokens=64, max_batch_size=8, eos_token_id=tokenizer.eos_token_id, flat=True)
        result = generate(target, prompts, policy, drafter, **kwargs)
        stats = result.stats
    finally:
        LiveTarget.verify = verify
    meta = run_metadata("cpu") | {"source": source, "policy": policy.name, "steps": stats["steps"]}
    meta["tok_per_decode_cpu_s"] = stats["generated_tokens"] / (
        stats["cpu_seconds"] - stats["prefill_cpu_seconds"]
    )
    # The outputs too: bf16 rounding differs between verification shapes, so two runs of the
    # same policy can decode different text, and their steps then differ for that reason alone.
    out.write_text(json.dumps({"meta": meta, "steps": log, "outputs": result.tokens}))
    print(f"{policy.name}: {stats['steps']} steps; wrote {out}")


# The online fit's variants: as shipped, the knee test alone, and the fit before either.
FITS = {
    "default": dict(forget=FIT_FORGET, knee_evidence=KNEE_EVIDENCE, clip=FIT_CLIP),
    "knee": dict(knee_evidence=KNEE_EVIDENCE),
    "before": dict(),
}


def with_fit(policy: CostAwareTetris, fit: str) -> CostAwareTetris:
    """The policy with its online fit (KneeLatencyModel) set as ``FITS[fit]``."""
    policy.verify_latency = KneeLatencyModel(**FITS[fit])
    return policy


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--margins", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    ap.add_argument(
        "--fits",
        nargs="+",
        choices=list(FITS),
        default=["default"],
        help="the online fit: default (as shipped), knee (the knee test only), before (neither)",
    )
    ap.add_argument(
        "--out",
        type=Path,
        help="output path (default results/cost_aware_live_tuning; --fit-log: results/cost_aware_fit_log_SOURCE[_sdK].json)",
    )
    ap.add_argument(
        "--fit-log",
        choices=["bundled", "tuning_chat", "tuning_code", "code", "chat", "rewrite"],
        help="log one run per step on this prompt set (bundled, tuning_*: tuning prompts; code, chat, "
        "rewrite: the held-out ones, for diagnosis only)",
    )
    ap.add_argument("--fit-k", type=int, help="--fit-log: StandardSD(k) instead of the cost-aware policy")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    target, tokenizer = load_target()
    if args.fit_log:
        name = args.fit_log + ("" if args.fit_k is None else f"_sd{args.fit_k}")
        out = args.out or RESULTS_DIR / f"cost_aware_fit_log_{name}.json"
        fit_log(target, tokenizer, args.fit_log, args.fit_k, ngram_estimator("gemma3-270m"), out)
        return 0
    out = args.out or RESULTS_DIR / "cost_aware_live_tuning"
    prompts = bundled_prompts(tokenizer)
    estimator = ngram_estimator("gemma3-270m")
    runs = {f"StandardSD({k})": (lambda k=k: StandardSD(k), None) for k in (3, 4, 5)}
    for m, fit in itertools.product(args.margins, args.fits):
        runs[f"CostAwareTetris (online cost, margin {m}, fit {fit})"] = (
            lambda m=m, fit=fit: with_fit(CostAwareTetris(8, padded=False, margin=m), fit),
            estimator,
        )
    rows = []
    for round_ in range(args.repeat):
        for name, (make_policy, make_estimator) in runs.items():
            drafter = NgramDrafter(8, 4, 1, calibration=make_estimator() if make_estimator else None)
            s = generate(
                target,
                prompts,
                make_policy(),
                drafter,
                max_new_tokens=64,
                max_batch_size=8,
                eos_token_id=tokenizer.eos_token_id,
                flat=True,
            ).stats
            rows.append(
                {
                    "round": round_,
                    "policy": name,
                }
                | decode_summary(s)
            )
            print(rows[-1], flush=True)
    columns = [("round", "round"), ("policy", "policy"), ("tok_per_decode_cpu_s", "tok/decode CPU s")]
    table = format_table(rows, columns + [("steps", "steps"), ("vsr", "VSR")])
    print(table)
    meta = run_metadata("cpu") | {"prompts": len(prompts), "repeat": args.repeat}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    out.with_suffix(".txt").write_text(f"{meta['command']}\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
