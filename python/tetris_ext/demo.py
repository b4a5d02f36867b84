"""`make demo`: TETRIS against standard and dynamic speculative decoding on a real model.

    python -m tetris_ext.demo [--k 3] [--extra 2] [--batch-size 8] [--prompts FILE] [--loop padded] ...

Gemma 3 270M (converted once from the bundled GGUF, then cached) decodes the bundled prompt set
(code and text tasks where drafting helps to different degrees) through a continuous batch,
once per policy, with the n-gram drafter (or ``--draft-model PATH``). Every forward runs on the
real tokens of the batch packed together (``generate(flat=True)``, as vLLM runs a step), so a
policy that verifies unevenly across requests pays for the tokens it verifies, not for a block
as wide as its widest request; ``--loop padded`` runs the padded [B, 1 + w] loop. Prints a table
(tokens/s, speed-up over autoregressive, verification success rate, accepted and verified
tokens per step, calibration Brier score) and writes JSON and PNG charts to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import torch

from .calibration import brier_score, reliability
from .cost_aware import CostAwareTetris
from .decoding import generate
from .drafters import ModelDrafter, NgramDrafter
from .estimators import NgramLogistic, token_class_table
from .machine import cpu_model
from .policies import Autoregressive, GoodputSD, GoodputTetris, StandardSD, Tetris, ThresholdSD

POLICY_CHOICES = (
    "autoregressive",
    "standard",
    "goodput-sd",
    "threshold",
    "tetris",
    "goodput-tetris",
    "cost-aware",
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tetris_ext.demo", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--policy",
        action="append",
        choices=POLICY_CHOICES,
        help="policy to run (repeatable; default: all). Autoregressive always runs as the baseline.",
    )
    p.add_argument("--k", type=int, default=3, help="StandardSD(k) and Tetris(k, extra) (default 3)")
    p.add_argument("--extra", type=int, default=2, help="Tetris's extra drafts per request (default 2)")
    p.add_argument(
        "--max-k", type=int, default=6, help="GoodputSD's and ThresholdSD's largest window (default 6)"
    )
    p.add_argument("--max-draft", type=int, default=5, help="GoodputTetris's drafts per request (default 5)")
    p.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="ThresholdSD's rejection-probability threshold (0.5: the best of 0.3-0.9 on the tuning "
        "traces, bench/threshold_tuning.py)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="requests decoding together (default 8)")
    p.add_argument(
        "--prompts",
        type=Path,
        help="JSONL file with a 'prompt' (or chat 'messages') per line (default: the bundled set)",
    )
    p.add_argument("--num-prompts", type=int, help="use only the first N prompts")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument(
        "--draft-model", type=Path, help="local path of a draft model sharing the target's vocabulary"
    )
    p.add_argument(
        "--pair",
        choices=("qwen2.5-coder",),
        help="Qwen2.5-Coder-Instruct 1.5B drafted by its 0.5B sibling instead of Gemma 3 270M "
        "(pip install tetris_ext[qwen]); prompts with 'messages' get the chat template",
    )
    p.add_argument("--tree-width", type=int, default=1, help="with --draft-model: children per tree node")
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="target weights (default float32: every output identical to autoregressive decoding; "
        "bfloat16 is about 2x faster on CPUs with AMX, but rounds a verification block differently "
        "from one-token steps, so near-ties can flip)",
    )
    p.add_argument(
        "--loop",
        choices=("flat", "padded"),
        default="flat",
        help="flat (default): forwards on the real tokens only, packed into one sequence; "
        "padded: a [batch, 1 + widest draft] block per step (the loop before generate(flat=True))",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on a small shared machine a second thread "
        "makes timings erratic; 0 = torch's default)",
    )
    p.add_argument("--out", type=Path, default=Path("bench/results/tmp/demo"), help="output directory")
    return p.parse_args(argv)


def make_policies(args) -> list:
    chosen = set(args.policy or POLICY_CHOICES)
    every = {
        "standard": StandardSD(args.k),
        "goodput-sd": GoodputSD(args.max_k),
        "threshold": ThresholdSD(args.threshold, args.max_k),
        "tetris": Tetris(args.k, args.extra),
        "goodput-tetris": GoodputTetris(args.max_draft),
        # The recommended policy. It, GoodputSD and GoodputTetris are priced for the loop they
        # run in: generate tells them its shape (padded or flat) before the first step.
        "cost-aware": CostAwareTetris(args.max_draft),
    }
    return [Autoregressive()] + [policy for name, policy in every.items() if name in chosen]


def load_prompts(path: Path | None, limit: int | None) -> list[dict]:
    text = (
        path.read_text() if path else resources.files("tetris_ext").joinpath("data/prompts.jsonl").read_text()
    )
    prompts = [json.loads(line) for line in text.splitlines() if line.strip()]
    return prompts[:limit] if limit else prompts


def run_policies(
    target,
    prompts,
    policies,
    make_drafter,
    batch_size,
    max_new_tokens,
    temperature=0.0,
    eos_token_id=None,
    progress=True,
    flat=True,
) -> list[dict]:
    """Decode ``prompts`` (token lists) once per policy; one summary dict per run (the first
    policy is the baseline for the speed-up). ``flat``: ``generate(flat=...)``."""
    from tqdm.auto import tqdm

    # One untimed warm-up step, so that the first run does not pay one-time costs.
    generate(target, prompts[:1], Autoregressive(), max_new_tokens=2, flat=flat)
    runs = []
    for policy in policies:
        drafter = make_drafter() if policy.num_draft(batch_size) > 0 else None
        total = len(prompts) * max_new_tokens
        with tqdm(
            total=total, desc=f"{policy.name:>22}", unit="tok", disable=not progress, leave=True
        ) as bar:
            result = generate(
                target,
                prompts,
                policy,
                drafter,
                max_new_tokens=max_new_tokens,
                max_batch_size=batch_size,
                temperature=temperature,
                eos_token_id=eos_token_id,
                progress=bar,
                flat=flat,
            )
        runs.append(summarize(policy.name, result, baseline=runs[0] if runs else None))
    return runs


def summarize(name: str, result, baseline: dict | None) -> dict:
    s = result.stats
    generated = s["generated_tokens"]
    cand = s["candidates"]
    predicted = torch.tensor(cand.get("predicted", []), dtype=torch.float64)
    accepted = torch.tensor(cand.get("accepted", []), dtype=torch.float64)
    tested = torch.tensor(cand.get("tested", []), dtype=torch.bool)
    token_predicted = torch.tensor(cand.get("predicted_token", []), dtype=torch.float64)
    run = {
        "policy": name,
        "tokens_per_second": generated / s["wall_seconds"],
        "tokens_per_cpu_second": generated / s["cpu_seconds"],
        "wall_seconds": s["wall_seconds"],
        "cpu_seconds": s["cpu_seconds"],
        "generated_tokens": generated,
        "steps": s["steps"],
        "verification_success_rate": s["accepted_tokens"] / s["verified_tokens"]
        if s["verified_tokens"]
        else None,
        "accepted_per_step": s["accepted_tokens"] / s["steps"],
        "verified_per_step": s["verified_tokens"] / s["steps"],
        "drafted_tokens": s["drafted_tokens"],
        "padded_tokens_per_step": sum(len(p["requests"]) * p["block_width"] for p in s["per_step"])
        / s["steps"],
        "ms_per_step": 1e3 * (s["draft_seconds"] + s["select_seconds"] + s["verify_seconds"]) / s["steps"],
        "brier_path": brier_score(predicted, accepted) if len(predicted) else None,
        "brier_token": brier_score(token_predicted[tested], accepted[tested]) if bool(tested.any()) else None,
        "reliability_path": reliability(predicted, accepted) if len(predicted) else [],
        "reliability_token": reliability(token_predicted[tested], accepted[tested])
        if bool(tested.any())
        else [],
        "seconds": {key: s[f"{key}_seconds"] for key in ("prefill", "draft", "select", "verify")},
        "outputs": result.tokens,
    }
    if baseline is None:
        run["speedup"] = run["cpu_speedup"] = 1.0
        run["same_output_as_baseline"] = len(result.tokens)
    else:
        run["speedup"] = run["tokens_per_second"] / baseline["tokens_per_second"]
        run["cpu_speedup"] = run["tokens_per_cpu_second"] / baseline["tokens_per_cpu_second"]
        run["same_output_as_baseline"] = sum(a == b for a, b in zip(result.tokens, baseline["outputs"]))
    return run


def format_table(runs: list[dict]) -> str:
    def fmt(x, spec):
        return "-" if x is None else format(x, spec)

    width = max(22, *(len(r["policy"]) for r in runs))
    head = (
        f"{'policy':<{width}} {'tok/s':>7} {'speed-up':>8} {'(cpu)':>6} {'VSR':>6} {'acc/step':>8} {'ver/step':>8} "
        f"{'steps':>6} {'ms/step':>7} {'Brier':>6} {'same':>5}"
    )
    lines = [head, "-" * len(head)]
    for r in runs:
        lines.append(
            f"{r['policy']:<{width}} {r['tokens_per_second']:>7.1f} {r['speedup']:>7.2f}x {r['cpu_speedup']:>5.2f}x "
            f"{fmt(r['verification_success_rate'], '>6.2f')} {r['accepted_per_step']:>8.2f} "
            f"{r['verified_per_step']:>8.2f} {r['steps']:>6} {r['ms_per_step']:>7.1f} "
            f"{fmt(r['brier_path'], '>6.3f')} {r['same_output_as_baseline']:>2}/{len(r['outputs'])}"
        )
    return "\n".join(lines)


TABLE_NOTES = (
    "tok/s: generated tokens per wall-clock second (prefill included); speed-up: over Autoregressive;\n"
    "(cpu): the same speed-up in process CPU time, which other processes on a shared machine disturb\n"
    "much less (with one thread);\n"
    "VSR: verification success rate = accepted / verified draft tokens; acc/step, ver/step: accepted\n"
    "and verified draft tokens per step, whole batch; steps: verification steps (target forwards\n"
    "without the prefills); ms/step: draft + select + verify time per step; Brier: calibration\n"
    "of the acceptance estimates of verified candidates (path level); same: outputs identical to\n"
    "Autoregressive."
)


def write_outputs(runs: list[dict], config: dict, out: Path) -> dict[str, Path]:
    """results.json, throughput.png, reliability.png (and table.txt) under ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "results.json",
        "chart": out / "throughput.png",
        "reliability": out / "reliability.png",
        "table": out / "table.txt",
    }
    payload = {
        "config": config,
        "runs": [{k: v for k, v in r.items() if k != "outputs"} for r in runs],
        "outputs": {r["policy"]: r["outputs"] for r in runs},
    }
    paths["json"].write_text(json.dumps(payload, indent=1))
    paths["table"].write_text(format_table(runs) + "\n\n" + TABLE_NOTES + "\n")

    names = [r["policy"] for r in runs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    bars = ax1.bar(names, [r["tokens_per_second"] for r in runs], color="tab:blue")
    for bar, r in zip(bars, runs):
        ax1.annotate(
            f"{r['speedup']:.2f}x",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax1.set_ylabel("generated tokens / s")
    ax1.set_title("Throughput (speed-up over autoregressive)")
    vsr = [r["verification_success_rate"] or 0.0 for r in runs]
    ax2.bar(names, vsr, color="tab:green")
    ax2.set_ylabel("accepted / verified draft tokens")
    ax2.set_title("Verification success rate")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=30, labelsize=8)
    loop = f", {config['loop']} loop" if "loop" in config else ""
    fig.suptitle(
        f"{config.get('target', '')}, {config.get('drafter', '')}, batch {config.get('batch_size')}{loop}"
    )
    fig.tight_layout()
    fig.savefig(paths["chart"], dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, title in (
        (axes[0], "reliability_path", "path (cumulative) estimate, all verified candidates"),
        (axes[1], "reliability_token", "per-token estimate, candidates whose parent was accepted"),
    ):
        ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1)
        for r in runs:
            bins = [b for b in r[key] if b["count"] > 0]
            if bins:
                ax.plot(
                    [b["mean_predicted"] for b in bins],
                    [b["observed"] for b in bins],
                    marker="o",
                    label=f"{r['policy']} (Brier {r['brier_path' if key == 'reliability_path' else 'brier_token']:.3f})",
                )
        ax.set_xlabel("predicted acceptance probability")
        ax.set_ylabel("observed acceptance frequency")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle("Calibration of the drafter's acceptance estimates (reliability)")
    fig.tight_layout()
    fig.savefig(paths["reliability"], dpi=120)
    plt.close(fig)
    return paths


def _machine() -> str:
    import os

    return f"{cpu_model()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch thread(s)"


def load_models(args):
    """The target, its tokenizer, its stop ids and name, and a factory of fresh drafters."""
    import transformers

    from .models import load_gemma3_270m

    transformers.logging.set_verbosity_error()
    dtype = getattr(torch, args.dtype)
    max_draft = max(args.k + args.extra, args.max_k, args.max_draft)
    eos_token_id, target_name = None, f"Gemma 3 270M (Q4_K_M GGUF, de-quantised, {args.dtype})"
    if args.pair:
        from .models import QWEN_STOP_TOKEN_IDS, load_qwen25_coder

        print(
            "Loading Qwen2.5-Coder-Instruct 1.5B and 0.5B (converted from GGUF parts on first use) ...",
            flush=True,
        )
        target, tokenizer = load_qwen25_coder("1.5b", dtype=dtype)
        draft, _ = load_qwen25_coder("0.5b", dtype=dtype)
        eos_token_id = list(QWEN_STOP_TOKEN_IDS)
        target_name = f"Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, {args.dtype})"
        drafter_name = f"ModelDrafter(Qwen2.5-Coder-0.5B-Instruct, tree_width={args.tree_width})"
    else:
        print("Loading Gemma 3 270M (converted from the bundled GGUF on first use) ...", flush=True)
        target, tokenizer = load_gemma3_270m(dtype=dtype)
        draft, drafter_name = None, "NgramDrafter + NgramLogistic (token classes)"
        if args.draft_model:
            draft = transformers.AutoModelForCausalLM.from_pretrained(args.draft_model, dtype=dtype).eval()
            drafter_name = f"ModelDrafter({args.draft_model.name}, tree_width={args.tree_width})"

    # n-gram drafts: the batched estimates with the tokenizer's token classes (built once; the
    # held-out Brier is 2 points lower with them, bench/README.md "Held-out estimates").
    token_classes = token_class_table(tokenizer) if draft is None else None

    def make_drafter():
        if draft is None:
            return NgramDrafter(max_draft=max_draft, calibration=NgramLogistic(token_classes=token_classes))
        return ModelDrafter(draft, max_draft, tree_width=args.tree_width)

    return target, tokenizer, eos_token_id or tokenizer.eos_token_id, target_name, make_drafter, drafter_name


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    target, tokenizer, eos_token_id, target_name, make_drafter, drafter_name = load_models(args)
    prompts = load_prompts(args.prompts, args.num_prompts)
    token_lists = [
        list(tokenizer.apply_chat_template(p["messages"], add_generation_prompt=True))
        if "messages" in p
        else tokenizer(p["prompt"]).input_ids
        for p in prompts
    ]
    policies = make_policies(args)
    print(
        f"{len(token_lists)} prompts ({sum(map(len, token_lists))} prompt tokens), batch {args.batch_size}, "
        f"{args.max_new_tokens} new tokens, drafter {drafter_name}, {args.loop} loop, "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )
    runs = run_policies(
        target,
        token_lists,
        policies,
        make_drafter,
        args.batch_size,
        args.max_new_tokens,
        args.temperature,
        eos_token_id=eos_token_id,
        flat=args.loop == "flat",
    )
    config = {
        "command": "python -m tetris_ext.demo "
        + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "target": target_name,
        "drafter": drafter_name,
        "prompts": len(token_lists),
        "batch_size": args.batch_size,
        "loop": args.loop,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "machine": _machine(),
        "torch": torch.__version__,
        "total_seconds": time.perf_counter() - started,
    }
    paths = write_outputs(runs, config, args.out)
    print()
    print(format_table(runs))
    print()
    print(TABLE_NOTES)
    print(
        f"\nResults: {paths['json']}, charts: {paths['chart']}, {paths['reliability']}  "
        f"(total {config['total_seconds']:.0f} s)"
    )
    return runs


if __name__ == "__main__":
    main()
