"""Per-step log of the cost-aware proposer's step-time fit inside vLLM (one engine, one set).

What the policy learns from every engine step and what it then chooses: the step's decoding
tokens (each request's root and verified drafts) and the prompt tokens of requests joining in
the same step (vLLM's chunked prefill), the measured seconds, the fitted price of a prompt token
(``_GoodputPolicy.prefill_fit``), and at each choice the budget, the floor and the fit's
seconds per decode token at the batch size. A diagnosis tool (it found that prompt tokens,
counted as decode tokens, cut the fitted slope about 5x at max_num_seqs 32; bench/README.md,
"vLLM: prompt tokens priced apart"), run on the tuning prompts:

    .venv-vllm/bin/python bench/vllm_fit_log.py --batch 32 --prompts tuning --set code \
        --out bench/results/vllm_fit_log_tuning_code_b32.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the proposer must live in this process
sys.path.insert(0, str(Path(__file__).resolve().parent))

import vllm_e2e  # noqa: E402  (bench/vllm_e2e.py: the engine and prompt sets of the benchmark)


def attach_log(policy) -> list[dict]:
    """Wrap the policy's observe / choose so that each appends one record to the returned list."""
    log: list[dict] = []
    observe, choose = policy.observe, policy.choose

    def logged_observe(feedback):
        observe(feedback)
        log.append(
            {
                "kind": "step",
                "requests": feedback.num_requests,
                "verified": int(feedback.verified.sum()),
                "decode_tokens": feedback.computed_tokens,
                "prompt_tokens": feedback.prefill_tokens,
                "seconds": feedback.verify_seconds,
                "prompt_token_seconds": float(policy.prefill_fit.coefficients[2]),
            }
        )

    def logged_choose(proposal):
        selected = choose(proposal)
        B = proposal.batch_size
        seconds = policy.verify_latency.predict_array(np.array([B, B + 1.0]), deviations=0)
        log.append(
            {
                "kind": "choice",
                "requests": B,
                "budget": int(selected.sum()),
                "floor": policy.last_floor,
                "decode_token_seconds": float(seconds[1] - seconds[0]),
            }
        )
        return selected

    policy.observe, policy.choose = logged_observe, logged_choose
    return log


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32, help="max_num_seqs")
    ap.add_argument("--prompts", choices=("heldout", "tuning"), default="tuning")
    ap.add_argument("--set", choices=("code", "text"), default="code")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1, help="runs of the set in the same engine")
    ap.add_argument("--out", type=Path, required=True, help="the log (JSON)")
    args = ap.parse_args()

    import vllm

    from tetris_ext.vllm import gemma3_270m_path, speculative_config
    from tetris_ext.vllm.config import ProposerOptions
    from tetris_ext.vllm.proposer import find_proposer

    llm = vllm_e2e.make_engine(
        gemma3_270m_path(), args.batch, True, speculative_config("tetris", k=3, extra=2)
    )
    prompts = vllm_e2e.prompt_sets(False, args.prompts)[args.set]
    llm.generate(prompts[:2], vllm.SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)  # warm-up
    proposer = find_proposer(llm)
    runs, propose_seconds = [], vllm_e2e.time_proposer(llm)  # wrapped once: propose finds vLLM's frame
    for _ in range(args.repeats):  # each a fresh proposer state, as the benchmark's rounds
        proposer.configure(ProposerOptions("cost-aware", 3, 2))
        log = attach_log(proposer.selection.policy)
        propose_seconds.clear()
        run = vllm_e2e.run_set(llm, prompts, args.batch, args.max_tokens, propose_seconds)
        run.pop("tokens")
        runs.append({"run": run, "log": log})
        print(json.dumps(run), flush=True)
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
