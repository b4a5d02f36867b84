"""vLLM's own draft-model speculative decoding with the Qwen2.5-Coder pair, on this CPU.

    /work/main/.venv-vllm/bin/python bench/qwen_vllm_draft.py --k 3 --prompts 12 --max-tokens 32

Each configuration runs in a fresh process (one engine per process): "none" (no speculation)
and "draft k" (``speculative_config={"method": "draft_model", "model": <0.5B folder>,
"num_speculative_tokens": k}``), bfloat16, the chat-formatted prompts of
bench/prompts/qwen_chat_code.jsonl (one source), all queued at t = 0 with ``max_num_seqs``
below the queue's length. Measurements as in bench/vllm_e2e.py (``run_set``). A configuration
that fails records its exception text. Writes ``<out>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
CACHE = Path.home() / ".cache" / "tetris_ext"


def run_config(args) -> dict:
    import vllm
    from transformers import AutoTokenizer
    from vllm_e2e import run_set  # noqa: E402  (sets vLLM's CPU environment variables)

    target = str(CACHE / "qwen2.5-coder-1.5b-instruct")
    tokenizer = AutoTokenizer.from_pretrained(target)
    records = [
        json.loads(line)
        for line in (HERE / "prompts" / "qwen_chat_code.jsonl").read_text().splitlines()
        if line.strip()
    ]
    prompts = [
        tokenizer.apply_chat_template(r["messages"], add_generation_prompt=True, tokenize=False)
        for r in records
        if r["source"] == args.source
    ][: args.prompts]
    spec = (
        None
        if args.config == "none"
        else {
            "method": "draft_model",
            "model": str(CACHE / "qwen2.5-coder-0.5b-instruct"),
            "num_speculative_tokens": args.k,
        }
    )
    row = {
        "config": args.config if args.config == "none" else f"draft {args.k}",
        "source": args.source,
        "max_num_seqs": args.batch,
        "speculative_config": spec,
    }
    t0 = time.perf_counter()
    try:
        llm = vllm.LLM(
            target,
            dtype="bfloat16",
            max_model_len=1024,
            max_num_seqs=args.batch,
            enforce_eager=True,
            seed=0,
            enable_prefix_caching=False,
            disable_log_stats=False,
            speculative_config=spec,
        )
        row["engine_start_s"] = time.perf_counter() - t0
        llm.generate(prompts[:1], vllm.SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)  # warm-up
        # run_set repeats the prompts up to 1.5 x max_num_seqs requests when the set is shorter.
        row |= run_set(llm, prompts, args.batch, args.max_tokens, [])
    except Exception as error:  # noqa: BLE001 - the point is to record why it does not run
        row["error"] = f"{type(error).__name__}: {error}"
        row["traceback_tail"] = traceback.format_exc().splitlines()[-25:]
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=("none", "draft", "all"), default="all")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--source", default="code")
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "qwen_vllm_draft")
    ap.add_argument("--row-file", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.config != "all":
        row = run_config(args)
        if args.row_file:
            args.row_file.write_text(json.dumps(row))
        print(json.dumps({k: v for k, v in row.items() if k != "tokens"}, indent=1))
        return 0
    rows = []
    for config in ("none", "draft"):
        row_file = args.out.with_name(args.out.name + f".{config}.tmp.json")
        cmd = [
            sys.executable,
            __file__,
            "--config",
            config,
            "--k",
            str(args.k),
            "--source",
            args.source,
            "--prompts",
            str(args.prompts),
            "--batch",
            str(args.batch),
            "--max-tokens",
            str(args.max_tokens),
            "--row-file",
            str(row_file),
        ]
        proc = subprocess.run(cmd, env=os.environ.copy(), capture_output=True, text=True)
        if row_file.exists():
            rows.append(json.loads(row_file.read_text()))
            row_file.unlink()
        else:
            rows.append(
                {
                    "config": config,
                    "error": f"process exited {proc.returncode}",
                    "stderr_tail": proc.stderr.splitlines()[-30:],
                }
            )
    base = rows[0]
    for row in rows:
        if "tok_per_s" in row and "tok_per_s" in base:
            row["speedup"] = row["tok_per_s"] / base["tok_per_s"]
            row["speedup_cpu"] = (base["cpu_s"] / base["output_tokens"]) / (
                row["cpu_s"] / row["output_tokens"]
            )
            row["same_output_as_none"] = sum(a == b for a, b in zip(row["tokens"], base["tokens"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(
        json.dumps({"k": args.k, "source": args.source, "rows": rows}, indent=1)
    )
    for row in rows:
        print({k: v for k, v in row.items() if k not in ("tokens", "traceback_tail", "stderr_tail")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
