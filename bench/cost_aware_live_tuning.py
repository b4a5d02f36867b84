"""The online-cost CostAwareTetris on the live flat loop, on the TUNING prompts: margins, rounds.

    python bench/cost_aware_live_tuning.py --repeat 2    # -> results/cost_aware_live_tuning.{json,txt}
    python bench/cost_aware_live_tuning.py --fit-log chat   # -> results/cost_aware_fit_log_chat.json

Gemma 3 270M bf16, one thread, batch 8, the bundled prompt set (the tuning part: nothing here is
held out), 64 new tokens, `generate(..., flat=True)`. StandardSD(3..5) and
`CostAwareTetris(8, padded=False, margin=m)` + NgramLogistic with Gemma's token classes, every
policy once per round, rounds back to back. Reports decode tokens per CPU second (prefill CPU
excluded), steps and VSR per round: the spread between rounds of the same policy shows how much
its choices depend on the measured step times.

--fit-log SOURCE: instead, one run of the default policy on that source's prompts, logging per
step the tokens it computed, the measured seconds, the online fit (intercept, slope past the
knee, knee) and the floor and budget it chose.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cost_aware import ngram_estimator  # noqa: E402
from sim import bundled_prompts, load_target  # noqa: E402

from common import RESULTS_DIR, format_table, run_metadata  # noqa: E402
from tetris_ext.cost_aware import CostAwareTetris  # noqa: E402
from tetris_ext.decoding import generate  # noqa: E402
from tetris_ext.drafters import NgramDrafter  # noqa: E402
from tetris_ext.policies import StandardSD  # noqa: E402


def fit_log(target, tokenizer, source: str, estimator, out: Path) -> None:
    """One run of CostAwareTetris(8, padded=False) on the flat loop, its fit logged per step."""
    path = Path(__file__).resolve().parent / "prompts" / f"estimates_{source}.jsonl"
    prompts = [
        tokenizer(json.loads(line)["prompt"]).input_ids for line in path.read_text().splitlines() if line
    ]
    policy, log = CostAwareTetris(8, padded=False), []
    observe = policy.observe

    def logged(feedback):
        observe(feedback)
        fit = policy.verify_latency
        log.append(
            {
                "tokens": feedback.num_requests + int(feedback.verified.sum()),
                "seconds": feedback.verify_seconds,
                "intercept_s": fit.intercept,
                "slope_s_per_token": fit.slope,
                "knee_tokens": fit.knee,
                "floor": policy.last_floor,
                "budget": policy.last_budget,
            }
        )

    policy.observe = logged
    drafter = NgramDrafter(8, 4, 1, calibration=estimator())
    kwargs = dict(max_new_tokens=64, max_batch_size=8, eos_token_id=tokenizer.eos_token_id, flat=True)
    stats = generate(target, prompts, policy, drafter, **kwargs).stats
    meta = run_metadata("cpu") | {"source": source, "steps": stats["steps"]}
    out.write_text(json.dumps({"meta": meta, "steps": log}, indent=1))
    print(f"{stats['steps']} steps; wrote {out}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--margins", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "cost_aware_live_tuning")
    ap.add_argument("--fit-log", choices=["code", "chat", "rewrite"], help="log the online fit on one source")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    target, tokenizer = load_target()
    if args.fit_log:
        out = RESULTS_DIR / f"cost_aware_fit_log_{args.fit_log}.json"
        fit_log(target, tokenizer, args.fit_log, ngram_estimator("gemma3-270m"), out)
        return 0
    prompts = bundled_prompts(tokenizer)
    estimator = ngram_estimator("gemma3-270m")
    runs = {f"StandardSD({k})": (lambda k=k: StandardSD(k), None) for k in (3, 4, 5)}
    for m in args.margins:
        runs[f"CostAwareTetris (online cost, margin {m})"] = (
            lambda m=m: CostAwareTetris(8, padded=False, margin=m),
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
                    "tok_per_decode_cpu_s": s["generated_tokens"]
                    / (s["cpu_seconds"] - s["prefill_cpu_seconds"]),
                    "steps": s["steps"],
                    "vsr": s["accepted_tokens"] / max(1, s["verified_tokens"]),
                }
            )
            print(rows[-1], flush=True)
    columns = [("round", "round"), ("policy", "policy"), ("tok_per_decode_cpu_s", "tok/decode CPU s")]
    table = format_table(rows, columns + [("steps", "steps"), ("vsr", "VSR")])
    print(table)
    meta = run_metadata("cpu") | {"prompts": len(prompts), "repeat": args.repeat}
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    args.out.with_suffix(".txt").write_text(f"{meta['command']}\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
