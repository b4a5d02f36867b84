"""Scaling study: every policy replayed on recorded Gemma 3 270M traces, batch 1 to 512.

    python bench/sim.py                       # record (once), fit the CPU cost model (once), replay
    python bench/sim.py --requests 2000 --batch-sizes 1 8 64 512     # a quicker look

1. Trace: Gemma 3 270M in bfloat16 (tetris_ext.models.load_gemma3_270m) greedy-decodes the bundled prompts
   with the n-gram drafter, and `tetris_ext.sim.record` stores every position's draft and the
   target's continuation (bench/results/traces/, committed: the study then needs no model).
2. Cost models: `cpu` is fitted (tetris_ext.cost_models.LinearCostModel.fit) to the step times of
   live `generate` runs of Gemma 3 270M on this machine, over several policies and batch sizes;
   (bfloat16, one thread); `gpu` is the documented roofline of a 70B target on 4x H100
   (cost_models.h100x4_llama70b).
3. Replay: `--requests` requests drawn from the trace (all arriving at once, a queue longer than
   the batch, as in the paper's setting) through every policy and batch size; a non-adaptive
   policy's steps are priced by both cost models in one replay, the goodput policies (which
   react to latency) are replayed once per cost model.

Writes bench/results/sim_scaling.json and sim_scaling_<cost model>.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, format_table, run_metadata, save_figure, write_json  # noqa: E402
from tetris_ext.cost_models import LinearCostModel, h100x4_llama70b, samples_from_run_stats  # noqa: E402
from tetris_ext.drafters import NgramDrafter  # noqa: E402
from tetris_ext.policies import (  # noqa: E402
    Autoregressive,
    GoodputSD,
    GoodputTetris,
    StandardSD,
    Tetris,
    ThresholdSD,
)
from tetris_ext.sim import Trace, record, replay  # noqa: E402

TRACE_PATH = RESULTS_DIR / "traces" / "gemma3-270m-bf16_ngram_d8_t64.npz"
CPU_COST_PATH = RESULTS_DIR / "cost_model_cpu_gemma3-270m-bf16.json"
MAX_DRAFT = 8

# name -> (factory, adapts to latency)
POLICIES = {
    "Autoregressive": (lambda: Autoregressive(), False),
    "StandardSD(1)": (lambda: StandardSD(1), False),
    "StandardSD(3)": (lambda: StandardSD(3), False),
    "StandardSD(5)": (lambda: StandardSD(5), False),
    "Tetris(1, 2)": (lambda: Tetris(1, 2), False),
    "Tetris(3, 2)": (lambda: Tetris(3, 2), False),
    "Tetris(3, 2, min_prob=0.2)": (lambda: Tetris(3, 2, min_prob=0.2), False),
    "ThresholdSD(0.7, 6)": (lambda: ThresholdSD(0.7, 6), False),
    "GoodputSD(6)": (lambda: GoodputSD(6), True),
    "GoodputTetris(5)": (lambda: GoodputTetris(5), True),
}


DTYPE = "bfloat16"  # as the demo: on this CPU a bfloat16 step is faster and flatter in tokens


def load_target(dtype: str = DTYPE):
    import transformers

    from tetris_ext.models import load_gemma3_270m

    transformers.logging.set_verbosity_error()
    return load_gemma3_270m(dtype=getattr(torch, dtype))


def bundled_prompts(tokenizer, limit=None, path: Path | None = None) -> list[list[int]]:
    """Token lists of the bundled prompt set (tetris_ext/data/prompts.jsonl, one JSON object with
    a "prompt" per line), or of `path` in the same format."""
    from importlib import resources

    text = (
        path.read_text() if path else resources.files("tetris_ext").joinpath("data/prompts.jsonl").read_text()
    )
    prompts = [json.loads(line)["prompt"] for line in text.splitlines() if line.strip()]
    return [tokenizer(p).input_ids for p in prompts[:limit]]


def record_trace(path: Path, max_new_tokens: int, prompts_file: Path | None = None) -> Trace:
    target, tokenizer = load_target()
    prompts = bundled_prompts(tokenizer, path=prompts_file)
    print(f"recording {len(prompts)} prompts x {max_new_tokens} tokens with Gemma 3 270M ...", flush=True)
    t0 = time.perf_counter()
    trace = record(
        target,
        NgramDrafter(MAX_DRAFT),
        prompts,
        max_new_tokens,
        MAX_DRAFT,
        eos_token_id=tokenizer.eos_token_id,
        batch_size=16,
        progress=True,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    trace.save(path)
    print(f"wrote {path} ({time.perf_counter() - t0:.0f} s)")
    return trace


def fit_cpu_cost_model(
    path: Path, batch_sizes=(1, 4, 8, 16), new_tokens=12, prompts=16, prompts_file: Path | None = None
) -> LinearCostModel:
    """Step times of live runs of Gemma 3 270M on this machine -> LinearCostModel (padded)."""
    from tqdm import tqdm

    from tetris_ext.decoding import generate

    target, tokenizer = load_target()
    token_lists = bundled_prompts(tokenizer, prompts, path=prompts_file)
    generate(target, token_lists[:1], Autoregressive(), max_new_tokens=2)  # warm-up
    runs = [
        (name, make)
        for name, make in [
            ("Autoregressive", Autoregressive),
            ("StandardSD(1)", lambda: StandardSD(1)),
            ("StandardSD(3)", lambda: StandardSD(3)),
            ("StandardSD(6)", lambda: StandardSD(6)),
            ("Tetris(3, 2)", lambda: Tetris(3, 2)),
        ]
    ]
    samples, prefill_seconds, prefill_tokens = [], 0.0, 0
    for B in tqdm(batch_sizes, desc="fit cpu cost model: batch sizes"):
        for _, make in runs:
            policy = make()
            drafter = NgramDrafter(MAX_DRAFT) if policy.num_draft(B) else None
            result = generate(
                target, token_lists, policy, drafter, max_new_tokens=new_tokens, max_batch_size=B
            )
            samples += samples_from_run_stats(result.stats)
            prefill_seconds += result.stats["prefill_seconds"]
            prefill_tokens += sum(len(p) - 1 for p in token_lists)
    model = LinearCostModel.fit(
        samples,
        name="cpu-gemma3-270m-bf16",
        padded=True,
        machine=run_metadata("cpu"),
        batch_sizes=list(batch_sizes),
    )
    # Prefill is timed apart from the steps; charge its measured mean per prompt token.
    model.coef["prefill_token"] = prefill_seconds / max(1, prefill_tokens)
    model.save(path)
    print(f"wrote {path}: {model.coef} (median relative error {model.info['median_rel_error']:.1%})")
    return model


def requests_for(batch_size: int, requests: int, per_slot: int, floor: int = 500) -> int:
    """Requests replayed at this batch size: `requests`, or fewer for small batches, where a
    replay is many cheap steps (per_slot * batch size, at least `floor`): every request then
    still shares its batch with ~per_slot waves of others. All policies of one batch size
    replay the same seeded request sequence, so their differences carry no sampling noise."""
    return min(requests, max(floor, per_slot * batch_size)) if per_slot else requests


def run_study(
    trace: Trace,
    cost_models: dict,
    policies: list[str],
    batch_sizes: list[int],
    requests: int,
    seed: int,
    per_slot: int = 0,
) -> list[dict]:
    from tqdm import tqdm

    primary, *others = cost_models.values()
    todo = [(B, name) for B in batch_sizes for name in policies]
    rows = []
    for B, name in tqdm(todo, desc="replays", unit="run"):
        make, adaptive = POLICIES[name]
        n = requests_for(B, requests, per_slot)
        if adaptive:
            for model in cost_models.values():
                r = replay(trace, make(), B, model, num_requests=n, seed=seed, keep_steps=False)
                rows.append(r.metrics | {"policy": name})
        else:
            r = replay(
                trace,
                make(),
                B,
                primary,
                num_requests=n,
                seed=seed,
                keep_steps=False,
                also_price=tuple(others),
            )
            rows.append(r.metrics | {"policy": name})
            rows += [m | {"policy": name} for m in r.also.values()]
    return rows


def chart(rows: list[dict], cost_model: str, meta: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure_title = (
        f"Replay of Gemma 3 270M n-gram traces, up to {meta['requests']} requests, "
        f"cost model {cost_model} ({meta['date'][:10]})"
    )

    sel = [r for r in rows if r["cost_model"] == cost_model]
    policies = list(dict.fromkeys(r["policy"] for r in sel))
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(18, 5.5))
    for name in policies:
        pts = sorted((r["batch_size"], r) for r in sel if r["policy"] == name)
        xs = [b for b, _ in pts]
        style = "-" if name.startswith(("Tetris", "GoodputTetris")) else "--"
        base = {r["batch_size"]: r["throughput_tokens_per_s"] for r in sel if r["policy"] == "StandardSD(3)"}
        ax1.plot(xs, [r["throughput_tokens_per_s"] for _, r in pts], style, marker="o", ms=3, label=name)
        ax2.plot(
            xs,
            [r["throughput_tokens_per_s"] / base[b] if b in base else float("nan") for b, r in pts],
            style,
            marker="o",
            ms=3,
            label=name,
        )
        ax3.plot(xs, [r["verification_success_rate"] for _, r in pts], style, marker="o", ms=3, label=name)
    for ax in (ax1, ax2, ax3):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size (requests decoding together)")
        ax.grid(alpha=0.3)
    ax1.set_yscale("log")
    ax1.set_ylabel("throughput (generated tokens / simulated s)")
    ax2.set_ylabel("throughput relative to StandardSD(3)")
    ax2.axhline(1.0, color="black", lw=0.8)
    ax3.set_ylabel("verification success rate (accepted / verified)")
    ax1.legend(fontsize=7)
    save_figure(fig, path, figure_title, top=0.95)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace", type=Path, default=TRACE_PATH, help="trace file (recorded when missing)")
    ap.add_argument("--record", action="store_true", help="record the trace again")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--prompts-file", type=Path, help="JSONL prompts (default: the bundled set)")
    ap.add_argument(
        "--cpu-cost-model", type=Path, default=CPU_COST_PATH, help="fitted model (fitted when missing)"
    )
    ap.add_argument("--refit", action="store_true", help="fit the CPU cost model again")
    ap.add_argument("--requests", type=int, default=10_000, help="requests per replay (the largest batches)")
    ap.add_argument(
        "--requests-per-slot",
        type=int,
        default=100,
        help="below --requests / this batch size, replay this many requests per batch slot "
        "(at least 500); 0: always --requests",
    )
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512])
    ap.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES), metavar="POLICY")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "sim_scaling")
    ap.add_argument(
        "--prepare-only", action="store_true", help="record the trace and fit the cost model, then stop"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    trace = (
        record_trace(args.trace, args.max_new_tokens, args.prompts_file)
        if args.record or not args.trace.exists()
        else Trace.load(args.trace)
    )
    cpu = (
        fit_cpu_cost_model(args.cpu_cost_model, prompts_file=args.prompts_file)
        if args.refit or not args.cpu_cost_model.exists()
        else LinearCostModel.load(args.cpu_cost_model)
    )
    if args.prepare_only:
        return 0
    gpu = h100x4_llama70b()
    cost_models = {cpu.name: cpu, gpu.name: gpu}
    meta = run_metadata("cpu") | {
        "requests": args.requests,
        "requests_per_slot": args.requests_per_slot,
        "requests_by_batch": {
            B: requests_for(B, args.requests, args.requests_per_slot) for B in args.batch_sizes
        },
        "trace": str(
            args.trace.relative_to(Path.cwd())
            if args.trace.is_absolute() and args.trace.is_relative_to(Path.cwd())
            else args.trace
        ),
        "trace_requests": trace.num_requests,
        "trace_max_new_tokens": trace.max_new_tokens,
        "trace_mean_accept_len": float(trace.accept_len.mean()),
        "cost_models": {"cpu": cpu.to_json(), "gpu": gpu.to_json()},
    }
    t0 = time.perf_counter()
    rows = run_study(
        trace, cost_models, args.policies, args.batch_sizes, args.requests, args.seed, args.requests_per_slot
    )
    meta["replay_seconds"] = time.perf_counter() - t0

    for name in cost_models:
        sel = [r for r in rows if r["cost_model"] == name]
        print(f"\n== cost model {name}")
        print(
            format_table(
                sorted(sel, key=lambda r: (r["batch_size"], r["policy"])),
                [
                    ("batch_size", "batch"),
                    ("policy", "policy"),
                    ("throughput_tokens_per_s", "tok/s"),
                    ("verification_success_rate", "VSR"),
                    ("accepted_per_step", "acc/step"),
                    ("verified_per_step", "ver/step"),
                    ("latency_p50_s", "p50 s"),
                    ("latency_p99_s", "p99 s"),
                ],
            )
        )
    write_json(args.out.with_suffix(".json"), {"meta": meta, "rows": rows})
    print(f"\nwrote {args.out.with_suffix('.json')}")
    for name in cost_models:
        png = args.out.with_name(f"{args.out.name}_{name}.png")
        chart(rows, name, meta, png)
        print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
