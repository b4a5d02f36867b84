"""End-to-end: the live decoding loop on the real default model, across policies, capacities
and batch sizes.

    python bench/e2e.py                 # default sweep: batch 8, k = 1..6, extra = 1, 2 (~15 min here)
    python bench/e2e.py --full          # k = 1..6, extra = 0..3, batch sizes 4, 8, 16
    python bench/e2e.py --draft-model PATH [--tree-width 2]   # a draft model instead of n-grams
    python bench/e2e.py --pair qwen2.5-coder --sources code   # Qwen2.5-Coder 1.5B + its 0.5B draft (bench/qwen_pair.py)

Gemma 3 270M (tetris_ext.models.load_gemma3_270m) greedy-decodes the bundled prompts through a
continuous batch (more prompts than the batch, as in serving) once per configuration:
Autoregressive (the baseline of each batch size), StandardSD(k), Tetris(k, extra) (capacity
k per request, k + extra drafts), and the dynamic baselines GoodputSD, ThresholdSD and
GoodputTetris. Every run's output is checked against the autoregressive one (greedy decoding
is exact). Writes bench/results/e2e.json, e2e_throughput.png (throughput against capacity per
policy) and e2e_vsr.png (verification success rate per policy).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, format_table, run_metadata, write_json  # noqa: E402
from tetris_ext.decoding import generate  # noqa: E402
from tetris_ext.drafters import ModelDrafter, NgramDrafter  # noqa: E402
from tetris_ext.policies import (  # noqa: E402
    Autoregressive,
    GoodputSD,
    GoodputTetris,
    StandardSD,
    Tetris,
    ThresholdSD,
)


def configurations(ks, extras, max_k, extra_runs=(), grid=True):
    """(family, k, extra, drafter options, policy factory) for every run of one batch size.
    ``extra_runs``: more runs from ``parse_run`` specs (trees, early-stopping drafters)."""
    chain = {}
    runs = [("Autoregressive", 0, 0, chain, Autoregressive)]
    if not grid:
        return runs + list(extra_runs)
    runs += [("StandardSD", k, 0, chain, lambda k=k: StandardSD(k)) for k in ks]
    runs += list(extra_runs)  # before the grid: a run cut short by time still has them
    for k in ks:
        for extra in extras:
            if extra > 0:  # Tetris(k, 0) selects exactly what StandardSD(k) does
                runs.append(("Tetris", k, extra, chain, lambda k=k, e=extra: Tetris(k, e)))
    return runs + [
        ("GoodputSD", max_k, 0, chain, lambda: GoodputSD(max_k)),
        ("ThresholdSD", max_k, 0, chain, lambda: ThresholdSD(0.7, max_k)),
        ("GoodputTetris", max_k, 0, chain, lambda: GoodputTetris(max_k)),
    ]


RUN_SPEC = re.compile(
    r"^(?P<policy>SD(?P<sd>\d)|T(?P<tk>\d)(?P<te>\d)|TH(?P<th>\d)|GS(?P<gs>\d)|GT(?P<gt>\d))"
    r"(?:p(?P<min_prob>[0-9.]+))?(?:w(?P<width>\d+))?(?:m(?P<mean>[0-9.]+))?(?:f(?P<floor>[0-9.]+))?$"
)


def parse_run(text: str):
    """A run spec -> a configuration: SD<k>, T<k><extra> (p<min_prob>: Tetris's floor), TH<max_k>
    (ThresholdSD(0.7, max_k)), GS<max_k>, GT<max_k>; then the drafter: w<tree width>,
    m<min_mean_path_prob>, f<min_path_prob>. E.g. T32m0.5, T33w2, TH5f0.7, SD3m0.5."""
    m = RUN_SPEC.match(text)
    if not m:
        raise argparse.ArgumentTypeError(
            f"--runs: cannot read {text!r} (e.g. T32m0.5, T33w2, TH5f0.7, SD3m0.5)"
        )
    opts = {}
    if m["width"]:
        opts["tree_width"] = int(m["width"])
    if m["mean"]:
        opts["min_mean_path_prob"] = float(m["mean"])
    if m["floor"]:
        opts["min_path_prob"] = float(m["floor"])
    min_prob = float(m["min_prob"]) if m["min_prob"] else None
    if m["sd"]:
        k = int(m["sd"])
        return ("StandardSD", k, 0, opts, lambda: StandardSD(k))
    if m["tk"]:
        k, e = int(m["tk"]), int(m["te"])
        return ("Tetris", k, e, opts, lambda: Tetris(k, e, min_prob=min_prob))
    n = int(m["th"] or m["gs"] or m["gt"])
    family, make = {
        "th": ("ThresholdSD", lambda: ThresholdSD(0.7, n)),
        "gs": ("GoodputSD", lambda: GoodputSD(n)),
        "gt": ("GoodputTetris", lambda: GoodputTetris(n)),
    }[next(g for g in ("th", "gs", "gt") if m[g])]
    return (family, n, 0, opts, make)


def label(policy, opts: dict) -> str:
    names = {"tree_width": "tree", "min_mean_path_prob": "stop-mean", "min_path_prob": "stop-floor"}
    return " ".join([str(policy)] + [f"{names[k]}={v:g}" for k, v in opts.items()])


def step_timings(stats: dict) -> list[list]:
    """Compact per-step record for cost-model fits: [requests, block width, verified, seconds]."""
    return [
        [
            len(s["requests"]),
            s["block_width"],
            sum(s["verified"]),
            round(s["draft_seconds"] + s["select_seconds"] + s["verify_seconds"], 6),
        ]
        for s in stats["per_step"]
    ]


def completion_latency(stats: dict) -> dict:
    """p50 / p99 over requests of the time from the run's start (every prompt queued at t = 0) to
    the end of the request's last step, summing the recorded step times (prefills not included:
    the loop times them in total only)."""
    finished, clock = {}, 0.0
    for s in stats["per_step"]:
        clock += s["draft_seconds"] + s["select_seconds"] + s["verify_seconds"]
        finished.update(dict.fromkeys(s["requests"], clock))
    latencies = torch.tensor(sorted(finished.values()), dtype=torch.float64)
    if not len(latencies):
        return {"latency_p50": None, "latency_p99": None}
    return {"latency_p50": float(latencies.quantile(0.5)), "latency_p99": float(latencies.quantile(0.99))}


@contextlib.contextmanager
def prefill_cpu_clock():
    """Process CPU seconds spent admitting requests (the prefill forwards of the target and the
    drafter), accumulated in the yielded one-element list while the context is open."""
    from tetris_ext.engine import Engine

    spent, admit = [0.0], Engine._admit

    def timed(self, joining):
        start = time.process_time()
        admit(self, joining)
        spent[0] += time.process_time() - start

    Engine._admit = timed
    try:
        yield spent
    finally:
        Engine._admit = admit


def run_one(
    target, prompts, policy, make_drafter, batch_size, max_new_tokens, eos, desc, opts=None
) -> tuple[dict, list]:
    from tqdm import tqdm

    drafter = make_drafter(**(opts or {})) if policy.num_draft(batch_size) > 0 else None
    with (
        tqdm(total=len(prompts) * max_new_tokens, desc=desc, unit="tok", leave=False) as bar,
        prefill_cpu_clock() as prefill_cpu,
    ):
        result = generate(
            target,
            prompts,
            policy,
            drafter,
            max_new_tokens=max_new_tokens,
            max_batch_size=batch_size,
            eos_token_id=eos,
            progress=bar,
        )
    s = result.stats
    decode_cpu = s["cpu_seconds"] - prefill_cpu[0] if s.get("cpu_seconds") else None
    row = {
        "policy": label(policy, opts or {}),
        "batch_size": batch_size,
        "tokens_per_second": s["generated_tokens"] / s["wall_seconds"],
        # process CPU time: with one thread, what the run cost whatever else the machine did
        "tokens_per_cpu_second": s["generated_tokens"] / s["cpu_seconds"] if s.get("cpu_seconds") else None,
        # the decoding steps only (prefill, the same target work for every policy, left out)
        "tokens_per_step_second": s["generated_tokens"]
        / (s["draft_seconds"] + s["select_seconds"] + s["verify_seconds"]),
        "decode_cpu_seconds": decode_cpu,
        "tokens_per_decode_cpu_second": s["generated_tokens"] / decode_cpu if decode_cpu else None,
        "wall_seconds": s["wall_seconds"],
        "cpu_seconds": s.get("cpu_seconds"),
        "generated_tokens": s["generated_tokens"],
        "steps": s["steps"],
        "drafted_tokens": s["drafted_tokens"],
        "verified_tokens": s["verified_tokens"],
        "accepted_tokens": s["accepted_tokens"],
        "verification_success_rate": s["accepted_tokens"] / s["verified_tokens"]
        if s["verified_tokens"]
        else None,
        "accepted_per_step": s["accepted_tokens"] / s["steps"],
        "verified_per_step": s["verified_tokens"] / s["steps"],
        "seconds": {k: s[f"{k}_seconds"] for k in ("prefill", "draft", "select", "verify")},
        "target_forwards": s["target_forwards"],
        "draft_share": s["draft_seconds"] / s["wall_seconds"],
        **completion_latency(s),
        "step_timings": step_timings(s),
    }
    return row, result.tokens


METRICS = {
    "tokens_per_second": "throughput (generated tokens / s)",
    "tokens_per_decode_cpu_second": "generated tokens / CPU second of the decoding steps",
}


def chart_throughput(rows: list[dict], meta: dict, path: Path, metric: str = "tokens_per_second") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batch_sizes = sorted({r["batch_size"] for r in rows})
    fig, axes = plt.subplots(1, len(batch_sizes), figsize=(max(10, 6.5 * len(batch_sizes)), 5), squeeze=False)
    for ax, B in zip(axes[0], batch_sizes):
        sel = [r for r in rows if r["batch_size"] == B]
        lines = {}
        for r in sel:
            if r["family"] == "StandardSD" and not r.get("drafter_options"):
                lines.setdefault("StandardSD(k)", []).append(r)
            elif r["family"] == "Tetris" and not r.get("drafter_options"):
                lines.setdefault(f"Tetris(k, extra={r['extra']})", []).append(r)
        for name, pts in lines.items():
            pts.sort(key=lambda r: r["k"])
            ax.plot(
                [r["k"] for r in pts],
                [r[metric] for r in pts],
                "-" if name.startswith("Tetris") else "--",
                marker="o",
                label=name,
            )
        variants = iter(
            ["tab:cyan", "tab:pink", "tab:olive", "tab:red", "navy", "darkgreen", "gold", "teal", "k"] * 3
        )
        for r in sel:
            if r["family"] in ("Autoregressive", "GoodputSD", "ThresholdSD", "GoodputTetris") or r.get(
                "drafter_options"
            ):
                ax.axhline(
                    r[metric],
                    ls=":" if not r.get("drafter_options") else "-.",
                    lw=1.2,
                    color={
                        "Autoregressive": "black",
                        "GoodputSD": "tab:gray",
                        "ThresholdSD": "tab:brown",
                        "GoodputTetris": "tab:purple",
                    }[r["family"]]
                    if not r.get("drafter_options")
                    else next(variants),
                    label=r["policy"],
                )
        ax.set_xlabel("capacity k (verified drafts per request per step)")
        ax.set_ylabel(METRICS[metric])
        ax.set_title(f"batch {B}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(
        f"Live loop, {meta['target']},\n{meta['drafter']}, {meta['prompts']} prompts x "
        f"{meta['max_new_tokens']} tokens\n{meta['cpu']} ({meta['torch_threads']} threads), "
        f"{meta['date'][:10]}",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.87))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def chart_vsr(rows: list[dict], meta: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = [r for r in rows if r["verification_success_rate"] is not None]
    batch_sizes = sorted({r["batch_size"] for r in sel})
    policies = list(dict.fromkeys(r["policy"] for r in sel))
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(policies) * len(batch_sizes)), 4.8))
    width = 0.8 / max(1, len(batch_sizes))
    for i, B in enumerate(batch_sizes):
        vals = {r["policy"]: r["verification_success_rate"] for r in sel if r["batch_size"] == B}
        ax.bar(
            [x + i * width for x in range(len(policies))],
            [vals.get(p, 0) for p in policies],
            width,
            label=f"batch {B}",
        )
    ax.set_xticks(
        [x + 0.4 - width / 2 for x in range(len(policies))], policies, rotation=60, ha="right", fontsize=7
    )
    ax.set_ylabel("verification success rate (accepted / verified drafts)")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(
        f"Verification success rate per policy — {meta['target']}, {meta['drafter']}, {meta['date'][:10]}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarize(
    attempts_per_config: list[list[tuple[dict, list]]],
    meta: dict,
    out: Path,
    num_prompts: int,
    metric: str = "tokens_per_second",
) -> None:
    """Median run of every configuration (in sweep order, Autoregressive first per batch size),
    ratios to Autoregressive, the table, the JSON and the charts."""
    rows, reference = [], {}
    for attempts in attempts_per_config:
        speeds = [row["tokens_per_second"] for row, _ in attempts]
        row, outputs = sorted(attempts, key=lambda a: a[0]["tokens_per_second"])[len(attempts) // 2]
        row["tokens_per_second_runs"] = speeds
        row["tokens_per_cpu_second_runs"] = [r["tokens_per_cpu_second"] for r, _ in attempts]
        B = row["batch_size"]
        if row["family"] == "Autoregressive":
            reference[B] = (outputs, row)
        ref_outputs, ref = reference[B]
        row |= {
            "speedup": row["tokens_per_second"] / ref["tokens_per_second"],
            "speedup_cpu_time": row["tokens_per_cpu_second"] / ref["tokens_per_cpu_second"]
            if row["tokens_per_cpu_second"] and ref["tokens_per_cpu_second"]
            else None,
            "speedup_steps": row["tokens_per_step_second"] / ref["tokens_per_step_second"],
            "speedup_decode_cpu": row["tokens_per_decode_cpu_second"] / ref["tokens_per_decode_cpu_second"]
            if row["tokens_per_decode_cpu_second"] and ref["tokens_per_decode_cpu_second"]
            else None,
            "same_output_as_autoregressive": sum(a == b for a, b in zip(outputs, ref_outputs)),
        }
        rows.append(row)
    print(
        format_table(
            rows,
            [
                ("batch_size", "batch"),
                ("policy", "policy"),
                ("tokens_per_second", "tok/s"),
                ("speedup", "vs AR"),
                ("tokens_per_cpu_second", "tok/cpu-s"),
                ("speedup_cpu_time", "vs AR (cpu)"),
                ("speedup_steps", "vs AR (steps)"),
                ("speedup_decode_cpu", "vs AR (decode cpu)"),
                ("verification_success_rate", "VSR"),
                ("accepted_per_step", "acc/step"),
                ("verified_per_step", "ver/step"),
                ("steps", "steps"),
                ("target_forwards", "fwd"),
                ("draft_share", "draft"),
                ("latency_p50", "p50 s"),
                ("latency_p99", "p99 s"),
                ("same_output_as_autoregressive", "exact"),
            ],
        )
    )
    write_json(out.with_suffix(".json"), {"meta": meta, "rows": rows})
    chart_throughput(rows, meta, out.with_name(out.name + "_throughput.png"), metric)
    chart_vsr(rows, meta, out.with_name(out.name + "_vsr.png"))
    print(f"\nwrote {out.with_suffix('.json')}, {out.name}_throughput.png, {out.name}_vsr.png")
    for r in rows:
        if r["same_output_as_autoregressive"] != num_prompts:
            print(
                f"WARNING: {r['policy']} at batch {r['batch_size']}: {r['same_output_as_autoregressive']}/{num_prompts} "
                "outputs equal the autoregressive ones"
            )


def finish_partial(partial: Path, out: Path, metric: str = "tokens_per_second") -> None:
    """The summary of a sweep stopped early, from its partial JSON (the runs it finished)."""
    import json

    saved = json.loads(partial.read_text())
    groups: dict[tuple, list] = {}
    for run in saved["runs"]:
        outputs = run.pop("outputs")
        groups.setdefault((run["batch_size"], run["policy"]), []).append((run, outputs))
    meta = saved["meta"] | {"stopped_early": True, "runs_finished": len(saved["runs"])}
    num_prompts = len(next(iter(groups.values()))[0][1])
    summarize(list(groups.values()), meta, out, num_prompts, metric)


def load_setup(args, max_draft: int):
    """(target, prompt token lists, eos ids, drafter factory, target name, drafter name)."""
    if args.pair:
        from qwen_pair import chat_prompts, load_pair

        from tetris_ext.models import QWEN_STOP_TOKEN_IDS

        target, draft, tokenizer = load_pair(args.dtype)
        prompts = [p["tokens"] for p in chat_prompts(tokenizer, args.sources, limit=args.prompts)]
        return (
            target,
            prompts,
            list(QWEN_STOP_TOKEN_IDS),
            lambda **o: ModelDrafter(
                draft,
                max_draft,
                **({"tree_width": args.tree_width, "score_temperature": args.score_temperature} | o),
            ),
            f"Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF de-quantised, {args.dtype})",
            f"ModelDrafter(Qwen2.5-Coder-0.5B-Instruct, tree_width={args.tree_width}, "
            f"score_temperature={args.score_temperature:g})",
        )
    from sim import bundled_prompts, load_target  # the same model and prompts as the scaling study

    target, tokenizer = load_target(args.dtype)
    prompts = bundled_prompts(tokenizer, args.prompts, path=args.prompts_file)
    target_name = f"Gemma 3 270M (Q4_K_M GGUF de-quantised, {args.dtype})"
    if args.draft_model:
        from transformers import AutoModelForCausalLM

        draft = AutoModelForCausalLM.from_pretrained(
            args.draft_model, dtype=getattr(torch, args.dtype)
        ).eval()
        return (
            target,
            prompts,
            tokenizer.eos_token_id,
            lambda **o: ModelDrafter(
                draft,
                max_draft,
                **({"tree_width": args.tree_width, "score_temperature": args.score_temperature} | o),
            ),
            target_name,
            f"ModelDrafter({args.draft_model.name}, tree_width={args.tree_width}, "
            f"score_temperature={args.score_temperature:g})",
        )
    return (
        target,
        prompts,
        tokenizer.eos_token_id,
        lambda **o: NgramDrafter(max_draft),
        target_name,
        f"NgramDrafter({max_draft})",
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="k = 1..6, extra = 0..3, batch sizes 4, 8, 16")
    ap.add_argument("--ks", type=int, nargs="+", help="capacities k (default 1..6)")
    ap.add_argument("--extras", type=int, nargs="+", help="Tetris extra drafts (default 1 2)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", help="default 8")
    ap.add_argument("--max-k", type=int, default=6, help="window of GoodputSD, ThresholdSD, GoodputTetris")
    ap.add_argument(
        "--prompts",
        type=int,
        default=24,
        help="how many bundled prompts (default 24; with --pair: per source)",
    )
    ap.add_argument("--prompts-file", type=Path, help="JSONL prompts (default: the bundled set)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--draft-model", type=Path, help="local path of a draft model sharing Gemma's vocabulary")
    ap.add_argument("--tree-width", type=int, default=1)
    ap.add_argument(
        "--runs",
        type=parse_run,
        nargs="+",
        default=[],
        metavar="SPEC",
        help="more runs with a draft model: " + parse_run.__doc__.split(":", 1)[1].strip(),
    )
    ap.add_argument(
        "--pair",
        choices=("qwen2.5-coder",),
        help="a target with its own draft model instead of Gemma + n-grams (needs tetris_ext[qwen])",
    )
    ap.add_argument(
        "--score-temperature",
        type=float,
        default=1.0,
        help="a draft model's score temperature (bench/qwen_calibration.py fits 0.75 for the Qwen pair)",
    )
    ap.add_argument(
        "--sources",
        nargs="+",
        default=["code", "chat"],
        help="with --pair: prompt sources of bench/prompts/qwen_chat_code.jsonl (default both)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1; see bench/README.md)")
    ap.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="float32 (default): every policy reproduces the greedy output exactly, so runs "
        "compare like with like; bfloat16 (the demo's) is faster but its rounding flips "
        "near-tied argmaxes, so outputs (and acceptance) differ between policies",
    )
    ap.add_argument("--repeats", type=int, default=1, help="runs per configuration (the median is kept)")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "e2e")
    ap.add_argument("--replot", type=Path, metavar="JSON", help="only redraw the charts of an earlier run")
    ap.add_argument(
        "--only-runs", action="store_true", help="Autoregressive and the --runs only (no k / extra grid)"
    )
    ap.add_argument(
        "--chart-metric",
        choices=sorted(METRICS),
        default="tokens_per_second",
        help="what the throughput chart plots (decode CPU time: robust on a shared machine)",
    )
    ap.add_argument(
        "--finish",
        type=Path,
        metavar="PARTIAL_JSON",
        help="only summarise the runs a stopped sweep finished (its .partial.json) into --out",
    )
    args = ap.parse_args(argv)
    if args.finish:
        finish_partial(args.finish, args.out, args.chart_metric)
        return 0
    if args.replot:
        import json

        saved = json.loads(args.replot.read_text())
        stem = args.replot.with_suffix("")
        chart_throughput(
            saved["rows"], saved["meta"], stem.with_name(stem.name + "_throughput.png"), args.chart_metric
        )
        chart_vsr(saved["rows"], saved["meta"], stem.with_name(stem.name + "_vsr.png"))
        return 0
    torch.set_num_threads(args.threads)
    ks = args.ks or [1, 2, 3, 4, 5, 6]
    extras = args.extras or ([0, 1, 2, 3] if args.full else [1, 2])
    batch_sizes = args.batch_sizes or ([4, 8, 16] if args.full else [8])

    max_draft = max([max(ks) + max(extras), args.max_k] + [k + e for _, k, e, _, _ in args.runs])
    target, prompts, eos, make_drafter, target_name, drafter_name = load_setup(args, max_draft)
    meta = run_metadata("cpu") | {
        "target": target_name,
        "drafter": drafter_name,
        "sources": args.sources if args.pair else None,
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "batch_sizes": batch_sizes,
        "ks": ks,
        "extras": extras,
        "max_k": args.max_k,
        "repeats": args.repeats,
        "dtype": args.dtype,
        "runs": [label(make(), opts) for _, _, _, opts, make in args.runs],
        "command": " ".join(["python", "bench/e2e.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    generate(target, prompts[:1], Autoregressive(), max_new_tokens=2)  # warm-up, untimed

    from tqdm import tqdm

    configs = [
        (B, cfg)
        for B in batch_sizes
        for cfg in configurations(ks, extras, args.max_k, args.runs, grid=not args.only_runs)
    ]
    # Repetitions go round the whole sweep, so that a slow phase of a shared machine spreads over
    # every configuration instead of landing on one; each row keeps the median run.
    todo = [(rep, B, cfg) for rep in range(args.repeats) for B, cfg in configs]
    runs: dict[tuple, list] = {}
    t0 = time.perf_counter()
    for rep, B, (family, k, extra, opts, make) in tqdm(todo, desc="e2e runs", unit="run"):
        policy = make()
        row, outputs = run_one(
            target,
            prompts,
            policy,
            make_drafter,
            B,
            args.max_new_tokens,
            eos,
            desc=f"B={B} {label(policy, opts)} ({rep + 1}/{args.repeats})",
            opts=opts,
        )
        row |= {"family": family, "k": k, "extra": extra, "drafter_options": opts}
        runs.setdefault((B, label(policy, opts)), []).append((row, outputs))
        # Every finished run at once, so that a sweep stopped early keeps what it measured.
        write_json(
            args.out.with_name(args.out.name + ".partial.json"),
            {"meta": meta, "runs": [r | {"outputs": o} for attempts in runs.values() for r, o in attempts]},
        )
    meta["total_seconds"] = time.perf_counter() - t0
    ordered = [runs[(B, label(make(), opts))] for B, (family, k, extra, opts, make) in configs]
    summarize(ordered, meta, args.out, len(prompts), args.chart_metric)
    return 0


if __name__ == "__main__":
    sys.exit(main())
