"""What a vLLM engine step costs on this CPU, by the shape of the drafts it verifies.

The cost-aware proposer prices a step as a line in its decoding tokens (each request's root and
verified drafts) with the prompt tokens of joining requests priced apart. This script asks
whether the shape of the step matters beside its token count: one engine with our proposer, the
same prompt set decoded under several policies (fixed k gives every request the same number of
drafts, tetris and cost-aware give ragged ones), every engine step logged (decoding requests,
drafts verified per request, prompt tokens, seconds between the proposer's return and its next
call), then least-squares fits of the step seconds on the token count alone and with shape terms
(the longest draft of the step, the requests given any draft), with each policy's mean residual
under the token-only fit. A diagnosis tool, run on the tuning prompts:

    .venv-vllm/bin/python bench/vllm_step_cost.py --batch 8 --prompts tuning-files --set text \
        --out bench/results/vllm_step_cost_tuning_text_b8.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the proposer must live in this process
sys.path.insert(0, str(Path(__file__).resolve().parent))

import vllm_e2e  # noqa: E402  (bench/vllm_e2e.py: the engine and prompt sets of the benchmark)

POLICIES = {
    "sd 1": dict(policy="sd", k=1, extra=0),
    "sd 2": dict(policy="sd", k=2, extra=0),
    "sd 3": dict(policy="sd", k=3, extra=0),
    "sd 4": dict(policy="sd", k=4, extra=0),
    "sd 5": dict(policy="sd", k=5, extra=0),
    "tetris 3+2": dict(policy="tetris", k=3, extra=2),
    "cost-aware": dict(policy="cost-aware", k=3, extra=2),
}


def attach_step_log(selection, log: list[dict], label: list[str]) -> None:
    """Wrap `DraftSelection.step` so that each call appends the engine step it follows."""
    inner = selection.step

    def logged(req_ids, sampled_token_ids, num_tokens, token_ids, verified=None, step_tokens=None, *rest):
        # rest: what the proposer passes after step_tokens (tokens left, output lengths, finished
        # requests), handed on untouched: the log needs only the step that just ran.
        now = time.perf_counter()
        last_end = selection._last_end
        if last_end is not None and selection._drafted_last:
            rows = len(sampled_token_ids)
            counts = []
            for rid in req_ids[:rows]:
                state = selection.requests.get(rid)
                if state is None or rid not in selection._drafted_last:
                    continue
                counts.append(
                    state.returned if verified is None else min(verified.get(rid, 0), state.returned)
                )
            decode = len(counts) + sum(counts)
            log.append(
                {
                    "policy": label[0],
                    "seconds": now - last_end,
                    "requests": len(counts),
                    "verified": counts,
                    "decode_tokens": decode,
                    "prompt_tokens": None if step_tokens is None else max(0, step_tokens - decode),
                }
            )
        return inner(req_ids, sampled_token_ids, num_tokens, token_ids, verified, step_tokens, *rest)

    selection.step = logged


def design(steps: list[dict], terms: list[str]) -> np.ndarray:
    columns = {
        "1": lambda s: 1.0,
        "decode_tokens": lambda s: s["decode_tokens"],
        "prompt_tokens": lambda s: s["prompt_tokens"] or 0,
        "requests": lambda s: s["requests"],
        "longest": lambda s: max(s["verified"], default=0),
        "with_drafts": lambda s: sum(v > 0 for v in s["verified"]),
        "requests x longest": lambda s: s["requests"] * (1 + max(s["verified"], default=0)),
    }
    return np.array([[columns[t](s) for t in terms] for s in steps], dtype=np.float64)


def fit(steps: list[dict], terms: list[str]) -> dict:
    X, y = design(steps, terms), np.array([s["seconds"] for s in steps])
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    residual = y - X @ coef
    by_policy = {}
    for name in dict.fromkeys(s["policy"] for s in steps):
        mask = np.array([s["policy"] == name for s in steps])
        by_policy[name] = {
            "steps": int(mask.sum()),
            "mean_residual_ms": float(residual[mask].mean() * 1e3),
            "mean_seconds_ms": float(y[mask].mean() * 1e3),
        }
    return {
        "terms": terms,
        "coefficients_ms": dict(zip(terms, (coef * 1e3).tolist())),
        "rms_residual_ms": float(np.sqrt((residual**2).mean()) * 1e3),
        "by_policy": by_policy,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8, help="max_num_seqs")
    ap.add_argument("--prompts", choices=("heldout", "tuning", "tuning-files"), default="tuning-files")
    ap.add_argument("--set", choices=("code", "text"), default="text")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2, help="passes over the policies (interleaved)")
    ap.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    ap.add_argument("--out", type=Path, required=True, help="the log and fits (JSON)")
    args = ap.parse_args()

    import vllm

    from tetris_ext.vllm import gemma3_270m_path, speculative_config
    from tetris_ext.vllm.config import ProposerOptions
    from tetris_ext.vllm.proposer import find_proposer

    most = max(ProposerOptions(**POLICIES[p]).max_drafts for p in args.policies)
    llm = vllm_e2e.make_engine(
        gemma3_270m_path(), args.batch, True, speculative_config("tetris", k=1, extra=most - 1)
    )
    prompts = vllm_e2e.prompt_sets(False, args.prompts)[args.set]
    llm.generate(prompts[:2], vllm.SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)  # warm-up
    proposer = find_proposer(llm)
    seconds = vllm_e2e.time_proposer(llm)
    steps: list[dict] = []
    label = [""]
    runs = []
    for repeat in range(args.repeats):
        for name in args.policies:
            proposer.configure(ProposerOptions(**POLICIES[name]))
            attach_step_log(proposer.selection, steps, label)
            label[0] = name
            run = vllm_e2e.run_set(llm, prompts, args.batch, args.max_tokens, seconds)
            run.pop("tokens")
            runs.append({"policy": name, "repeat": repeat} | run)
            print(
                f"{name:<11} {run['tok_per_s']:6.1f} tok/s steps {run['steps']:3d} "
                f"ver/step {run['verified_per_step']:5.2f}",
                flush=True,
            )
    # Decoding steps only (a joining prompt's tokens dominate the steps it joins).
    decode_steps = [s for s in steps if not s["prompt_tokens"]]
    fits = [
        fit(decode_steps, ["1", "decode_tokens"]),
        fit(decode_steps, ["1", "decode_tokens", "longest"]),
        fit(decode_steps, ["1", "decode_tokens", "with_drafts"]),
        fit(decode_steps, ["1", "decode_tokens", "requests x longest"]),
        fit(decode_steps, ["1", "decode_tokens", "requests", "longest", "with_drafts"]),
    ]
    for f in fits:
        coef = ", ".join(f"{t} {c:.3f}" for t, c in f["coefficients_ms"].items())
        print(f"fit [{coef}] rms {f['rms_residual_ms']:.2f} ms")
        for name, p in f["by_policy"].items():
            print(
                f"    {name:<11} steps {p['steps']:4d} mean {p['mean_seconds_ms']:6.1f} ms, "
                f"residual {p['mean_residual_ms']:+6.2f} ms"
            )
    args.out.write_text(
        json.dumps({"command": " ".join(sys.argv), "runs": runs, "fits": fits, "steps": steps}, indent=1)
    )


if __name__ == "__main__":
    main()
