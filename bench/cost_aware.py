"""CostAwareTetris against the baselines: replays of the held-out traces, and the live run.

    python bench/cost_aware.py                    # replay: fitted CPU cost model and GPU roofline
    python bench/cost_aware.py --steady --out bench/results/cost_aware_steady   # steady protocol
    python bench/cost_aware.py --roofline A100-8B --roofline-only --gpu-batches 32 64 128 256 512 \
        --out bench/results/cost_aware_a100   # another GPU machine's roofline, its cells only
    python bench/cost_aware.py --tune-growth 1.25 1.5 2 3 --out bench/results/cost_aware_tune_growth
    python bench/cost_aware.py --tune-probe 1 0.125 0.0625 0.03125 --gpu-batches 64 128 256 512 \
        --draws 3 --out bench/results/cost_aware_tune_probe        # (and --model, --steady)
    python bench/cost_aware.py --tune-knee-bracket 0.125 --gpu-batches 64 128 --draws 6 \
        --out bench/results/cost_aware_tune_knee_bracket           # (and --model, --steady)
    python bench/cost_aware.py --tuning-only --model smollm2-135m   # the tuning trace, defaults only
    python bench/cost_aware.py --tuning-only --drain --cost-aware-only --draws 3 --gpu-batches 8 64 128 256 512 \
        --out bench/results/cost_aware_tune_drain_gemma_burst       # the drain rule beside the default
    python bench/cost_aware.py --tune-margin 0 0.1 0.2 0.3 --gpu-batches 64 128 256 512 \
        --out bench/results/cost_aware_tune_margin
    python bench/cost_aware.py --live --source code --batch 8   # live on this CPU (one thread)
    python bench/cost_aware.py --live --flat --repeat 2 --only 'StandardSD(3)' ...  # padded vs flat loop

Replay (tetris_ext.sim.replay): every policy on each held-out source trace (code, chat, rewrite;
recorded with Gemma 3 270M bf16, see bench/estimates.py) at batch 8 with the fitted CPU cost model
(bench/results/cost_model_cpu_gemma3-270m-bf16.json, a padded loop), and on the pooled held-out
traces at batch 8, 64, 128, 256 and 512 with the 4xH100 / Llama-70B roofline (a flattened engine;
--roofline names another machine of cost_models.ROOFLINES, on which nothing was chosen, and
--roofline-only leaves out the CPU cells). Baselines: Autoregressive, StandardSD(k) for every k
(the best in hindsight is reported), GoodputSD, ThresholdSD (SpecDec++ style), Tetris(3, 2)
(StandardSD(3)'s verified count each step) and Tetris(3, 2, full_budget) (3 x requests always),
GoodputTetris, all with the drafter's default estimator (NgramLogistic without token classes since
2026-11-30; before: AcceptanceCalibration); ThresholdSD and Tetris(3, 2) also with NgramLogistic
and the token classes of the traces' (or the live target's) tokenizer, the recommended pairing
(ThresholdSD at 0.7, the SpecDec++-style default, and at 0.5, its best on the tuning traces with
today's prior: bench/threshold_tuning.py). The bundled (tuning) trace is replayed too, labelled as
tuned-on.

Protocols (bench/README.md says what each favours): by default every request is waiting at
t=0 with its recorded 64 tokens (a queue of twice the batch on the roofline) and throughput is
the whole run's, the drain at the end included. --steady: a closed loop of STEADY_WAVES x the
batch requests (a finished request is replaced at once), each output cut at a seeded length
between STEADY_TRUNCATE and all of its recorded length, and throughput over the steady window
(first finish to last admission; tetris_ext.sim.replay's steady_window) per second of decoding
(the ratios; the prefill of the prompts that join, the same work under every policy, left out)
and per second of the window (prefill included), with each request's service time per token.
--chunked-prefill: the roofline engine computes the joining prompts inside the step's forward
(vLLM V1, SGLang) instead of a forward of their own before it (this project's loop), and the
policies are told each step's whole forward and its prompt tokens, as vLLM's proposer is (and,
before the choice, the step's prompt tokens: Proposal.prefill_tokens); decoding seconds are
then the forwards less what the prompts add to each step's roots alone
(cost_models.price_step).

Live (--live): the same policies through decoding.generate on Gemma 3 270M bf16, one thread,
the source's prompts (more than the batch), reporting tokens per CPU second and per wall second.
With --flat every policy also runs on the flat loop (generate(flat=True): the model on the real
tokens only; CostAwareTetris priced for it, padded=False), back to back with its padded run;
with --flat-only on the flat loop alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import cache, partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from estimates import SMOLLM2_SOURCES, SOURCES, TUNING, load_token_classes  # noqa: E402

from common import RESULTS_DIR, format_table, run_metadata  # noqa: E402
from tetris_ext.cost_aware import CostAwareTetris  # noqa: E402
from tetris_ext.cost_models import ROOFLINES, LinearCostModel  # noqa: E402
from tetris_ext.drafters import NgramDrafter  # noqa: E402
from tetris_ext.estimators import NgramLogistic  # noqa: E402
from tetris_ext.policies import Autoregressive, GoodputSD, GoodputTetris, StandardSD, Tetris, ThresholdSD  # noqa: E402
from tetris_ext.sim import Trace, replay  # noqa: E402

CPU_COST_PATH = RESULTS_DIR / "cost_model_cpu_gemma3-270m-bf16.json"
MAX_DRAFT = 8
RECOMMENDED = "CostAwareTetris"
ESTIMATOR = "NgramLogistic (token classes)"  # the rows' label of ngram_estimator()
STEADY_WAVES = 8  # --steady: requests per replay, in batches
STEADY_TRUNCATE = 0.25  # --steady: outputs cut at a uniform 25-100% of their recorded length


@cache
def flat_cpu_line(
    intercept: float = 0.038, per_token: float = 0.0022, draft: float = 0.0026
) -> LinearCostModel:
    """The live flat loop's step as the logs show it: a line in the computed tokens (requests +
    verified candidates, real tokens only), drafting per step; prefill free (decode only)."""
    return LinearCostModel(
        {"step": intercept, "query_token": per_token, "drafting_request": draft / 8},
        name=f"flat-cpu-line({intercept * 1e3:g}ms+{per_token * 1e3:g}ms/tok)",
        padded=False,
    )


def ngram_estimator(model: str = "gemma3-270m"):
    """Factory of the recommended estimator: NgramLogistic with the token classes of ``model``'s
    vocabulary (the tokenizer only, loaded once per run; bench/estimates.py)."""
    return partial(NgramLogistic, token_classes=load_token_classes(model))


def policies(
    padded: bool,
    cost_model=None,
    growths=(),
    margins=(),
    model: str = "gemma3-270m",
    probes=(),
    brackets=(),
    drain=False,
    cost_aware_only=False,
    end_hazard=None,
) -> dict:
    """name -> (policy factory, estimator factory or None for the default calibration); with
    ``growths``, the online-cost policy once per trust-region growth (--tune-growth); with
    ``margins``, the online- and the known-cost policy once per margin (--tune-margin); with
    ``probes``, the online-cost policy once per first-probe fraction (--tune-probe); with
    ``brackets``, once per knee bracket (--tune-knee-bracket, ``CostAwareTetris(knee_bracket=)``).
    ``model``: whose vocabulary the NgramLogistic rows' token classes come from. ``drain``: the
    cost-aware policies also with ``drain=True`` (--drain); ``end_hazard``: a list of
    priors: the cost-aware policies also with ``end_hazard=False`` and with each ``end_prior``
    (--end-hazard [PRIOR ...]); ``cost_aware_only``: no baselines
    but Autoregressive (--cost-aware-only: a faster side-by-side of variants)."""
    est, logistic = ESTIMATOR, ngram_estimator(model)
    runs = {"Autoregressive": (Autoregressive, None)}
    runs |= {f"StandardSD({k})": (lambda k=k: StandardSD(k), None) for k in range(1, MAX_DRAFT + 1)}
    runs |= {
        "GoodputSD(6)": (lambda: GoodputSD(6), None),
        "ThresholdSD(0.7, 6)": (lambda: ThresholdSD(0.7, 6), None),
        "Tetris(3, 2)": (lambda: Tetris(3, 2), None),
        "Tetris(3, 2, full_budget)": (lambda: Tetris(3, 2, full_budget=True), None),
        "GoodputTetris(5)": (lambda: GoodputTetris(5), None),
        f"ThresholdSD(0.7, 6) + {est}": (lambda: ThresholdSD(0.7, 6), logistic),
        # The threshold chosen on the tuning traces with the prior refitted on three tuning
        # sources (bench/threshold_tuning.py: 0.5 the best of 0.5-0.9 on each).
        f"ThresholdSD(0.5, 6) + {est}": (lambda: ThresholdSD(0.5, 6), logistic),
        f"Tetris(3, 2) + {est}": (lambda: Tetris(3, 2), logistic),
        f"CostAwareTetris (online cost) + {est}": (lambda: CostAwareTetris(MAX_DRAFT, padded), logistic),
    }
    for growth in growths:
        runs[f"CostAwareTetris (online cost, growth {growth:g}) + {est}"] = (
            lambda growth=growth: CostAwareTetris(MAX_DRAFT, padded, growth=growth),
            logistic,
        )
    for probe in probes:
        runs[f"CostAwareTetris (online cost, probe {probe:g}) + {est}"] = (
            lambda probe=probe: CostAwareTetris(MAX_DRAFT, padded, probe=probe),
            logistic,
        )
    for bracket in brackets:
        runs[f"CostAwareTetris (online cost, knee bracket {bracket:g}) + {est}"] = (
            lambda bracket=bracket: CostAwareTetris(MAX_DRAFT, padded, knee_bracket=bracket),
            logistic,
        )
    for margin in margins:
        runs[f"CostAwareTetris (online cost, margin {margin:g}) + {est}"] = (
            lambda margin=margin: CostAwareTetris(MAX_DRAFT, padded, margin=margin),
            logistic,
        )
        if cost_model is not None:
            runs[f"CostAwareTetris (known cost, margin {margin:g}) + {est}"] = (
                lambda margin=margin: CostAwareTetris(
                    MAX_DRAFT, padded, cost_model=cost_model, margin=margin
                ),
                logistic,
            )
    if cost_model is not None:
        runs[f"CostAwareTetris (known cost) + {est}"] = (
            lambda: CostAwareTetris(MAX_DRAFT, padded, cost_model=cost_model),
            logistic,
        )
    variants = [(f"drain {v}", {"drain": v}) for v in ([False, True] if drain else [])]
    variants += [("end hazard off", {"end_hazard": False})] if end_hazard is not None else []
    variants += [(f"end hazard {p:g}", {"end_hazard": True, "end_prior": p}) for p in end_hazard or []]
    known = {"cost_model": cost_model} if cost_model is not None else None
    for variant, options in variants:
        for label, kwargs in [("online cost", {}), ("known cost", known)]:
            if kwargs is not None:
                runs[f"CostAwareTetris ({label}, {variant}) + {est}"] = (
                    lambda kwargs=kwargs, options=options: CostAwareTetris(
                        MAX_DRAFT, padded, **options, **kwargs
                    ),
                    logistic,
                )
    if cost_aware_only:
        runs = {k: v for k, v in runs.items() if k == "Autoregressive" or k.startswith(RECOMMENDED)}
    return runs


def drafter_for(trace_or_cfg, estimator):
    cfg = trace_or_cfg.drafter if isinstance(trace_or_cfg, Trace) else trace_or_cfg
    return NgramDrafter(
        cfg["max_draft"], cfg["max_ngram"], cfg["min_ngram"], calibration=estimator() if estimator else None
    )


def pool(traces: list[Trace]) -> Trace:
    """One trace holding the requests of several (same lengths and draft size)."""
    first = traces[0]
    width = min(t.draft_features.shape[-1] for t in traces)
    cat = lambda name: np.concatenate([getattr(t, name) for t in traces])  # noqa: E731
    return Trace(
        prompts=[p for t in traces for p in t.prompts],
        continuation=cat("continuation"),
        out_len=cat("out_len"),
        draft_tokens=cat("draft_tokens"),
        draft_parents=None,
        # Traces recorded before the transition agreement hold 4 features: the replay recomputes
        # the fifth from each request's tokens (tetris_ext.sim), so a pool keeps the common ones.
        draft_features=np.concatenate([t.draft_features[..., :width] for t in traces]),
        draft_token_logprobs=cat("draft_token_logprobs"),
        draft_cum_logprobs=cat("draft_cum_logprobs"),
        accept_len=cat("accept_len"),
        drafter=first.drafter,
        max_new_tokens=first.max_new_tokens,
        eos_token_ids=first.eos_token_ids,
    )


COLUMNS = [
    ("policy", "policy"),
    ("throughput", "tok/s"),
    ("vs_best_baseline", "vs best"),
    ("verification_success_rate", "VSR"),
    ("accepted_per_step", "acc/step"),
    ("verified_per_step", "ver/step"),
    ("steps", "steps"),
]
BURST_COLUMNS = [
    ("decode_throughput", "decode tok/s"),
    ("vs_best_baseline_decode", "vs best"),
    ("prefill_seconds", "prefill s"),
    ("prefill_steps", "joins"),
    ("drain_steps", "drain steps"),
    ("drain_seconds", "drain s"),
]
STEADY_COLUMNS = [
    ("steady_throughput_tokens_per_s", "with prefill"),
    ("service_per_token_p50_ms", "ms/tok p50"),
    ("service_per_token_p90_ms", "p90"),
]


def sweep(
    label: str,
    trace: Trace,
    cost_model,
    padded: bool,
    batch: int,
    requests: int | None,
    steady: bool = False,
    growths=(),
    margins=(),
    model: str = "gemma3-270m",
    probes=(),
    seed: int = 0,
    brackets=(),
    drain=False,
    cost_aware_only=False,
    end_hazard=None,
) -> list[dict]:
    """Every policy on one trace and cost model. ``throughput`` (what the ratios compare): the
    whole run's, or with ``steady`` the steady window's of the steady protocol (module doc).
    ``seed``: the replay's draw of the requests (with replacement) when ``requests`` is given."""
    rows = []
    protocol = {}
    if steady:
        requests = max(trace.num_requests, STEADY_WAVES * batch)
        protocol = {"truncate_outputs": STEADY_TRUNCATE, "steady_window": True}
    for name, (make_policy, estimator) in policies(
        padded, cost_model, growths, margins, model, probes, brackets, drain, cost_aware_only, end_hazard
    ).items():
        t0 = time.perf_counter()
        result = replay(
            trace,
            make_policy(),
            batch,
            cost_model,
            num_requests=requests,
            keep_steps=not steady,
            drafter=drafter_for(trace, estimator),
            seed=seed,
            **protocol,
        )
        m = result.metrics
        rows.append(
            m
            | ({} if steady else prefill_split(result))
            | {
                "workload": label,
                "draw": seed,
                "policy": name,
                "policy_object": m["policy"],
                "protocol": "steady" if steady else "burst",
                "throughput": m[
                    "steady_decode_throughput_tokens_per_s" if steady else "throughput_tokens_per_s"
                ],
                "replay_seconds": time.perf_counter() - t0,
            }
            | (
                {f"service_per_token_{q}_ms": 1e3 * m[f"service_per_token_{q}_s"] for q in ("p50", "p90")}
                if steady
                else {}
            )
        )
    sd_rows = [r for r in rows if r["policy"].startswith("StandardSD")]
    sd_rows = sd_rows or [r for r in rows if r["policy"] == "Autoregressive"]  # --cost-aware-only
    best_sd = max(sd_rows, key=lambda r: r["throughput"])
    baselines = [r for r in rows if not r["policy"].startswith(RECOMMENDED)]
    best = max(baselines, key=lambda r: r["throughput"])
    best_decode = None if steady else max(baselines, key=lambda r: r["decode_throughput"])
    for r in rows:
        r["vs_best_sd"] = r["throughput"] / best_sd["throughput"]
        r["vs_best_baseline"] = r["throughput"] / best["throughput"]
        r["best_sd"], r["best_baseline"] = best_sd["policy"], best["policy"]
        if best_decode is not None:
            r["vs_best_baseline_decode"] = r["decode_throughput"] / best_decode["decode_throughput"]
            r["best_baseline_decode"] = best_decode["policy"]
    print(
        f"\n== {label}: batch {batch}, {cost_model.name}, {m['requests']} requests{f' (draw {seed})' if seed else ''} "
        f"(best SD in hindsight {best_sd['policy']}, best baseline {best['policy']})"
    )
    print(format_table(rows, COLUMNS + (STEADY_COLUMNS if steady else BURST_COLUMNS)), flush=True)
    return rows


def prefill_split(result) -> dict:
    """A burst replay's seconds split into decoding and the prefill of joining requests. The
    prefill is the same prompts under every policy, but a step with joiners prefills them in a
    forward of its own: on the roofline a few prompts cost a whole weight read, so a policy
    whose requests finish over more steps pays more (bench/README.md, "The drain and the
    probe"). ``prefill_steps``: the steps with joiners; ``drain_steps`` / ``drain_seconds``: the
    steps after the last of them (the queue is empty, the batch drains)."""
    steps = result.per_step
    decode = sum(s["draft_seconds"] + s["select_seconds"] + s["verify_seconds"] for s in steps)
    total = sum(s["step_seconds"] for s in steps)
    joins, last_join, before = 0, 0, set()
    for i, s in enumerate(steps):
        if set(s["requests"]) - before:
            joins, last_join = joins + 1, i
        before = set(s["requests"])
    return {
        "decode_seconds": decode,
        "prefill_seconds": total - decode,
        "prefill_steps": joins,
        "drain_steps": len(steps) - 1 - last_join,
        "drain_seconds": sum(s["step_seconds"] for s in steps[last_join + 1 :]),
        "decode_throughput": result.metrics["generated_tokens"] / decode,
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(
        dict.fromkeys((r["workload"], r["batch_size"], r["cost_model"], r.get("draw", 0)) for r in rows)
    )
    shown = [
        "best StandardSD",
        "GoodputSD(6)",
        "ThresholdSD(0.7, 6)",
        "Tetris(3, 2)",
        "GoodputTetris(5)",
        f"CostAwareTetris (online cost) + {ESTIMATOR}",
        f"CostAwareTetris (known cost) + {ESTIMATOR}",
    ]
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(configs)), 4.5))
    width = 0.8 / len(shown)
    for i, name in enumerate(shown):
        values = []
        for c in configs:
            sel = [
                r for r in rows if (r["workload"], r["batch_size"], r["cost_model"], r.get("draw", 0)) == c
            ]
            pick = [
                r for r in sel if r["policy"] == (sel[0]["best_sd"] if name == "best StandardSD" else name)
            ]
            ar = [r for r in sel if r["policy"] == "Autoregressive"][0]["throughput"]
            values.append(pick[0]["throughput"] / ar if pick else np.nan)
        ax.bar(np.arange(len(configs)) + i * width, values, width, label=name)
    ax.set_xticks(
        np.arange(len(configs)) + 0.4 - width / 2,
        [f"{w}\nB={b}\n{'cpu' if 'cpu' in c else 'gpu'}{f' #{d}' if d else ''}" for w, b, c, d in configs],
        fontsize=7,
    )
    ax.axhline(1.0, color="grey", lw=0.8)
    steady = rows[0]["protocol"] == "steady"
    ax.set_ylabel(f"{'steady-window ' if steady else ''}throughput / Autoregressive (replay)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def roofline(name: str, chunked_prefill: bool):
    """The roofline machine ``name`` (cost_models.ROOFLINES); with ``chunked_prefill`` its engine
    computes the joining prompts inside the step's forward (--chunked-prefill)."""
    machine = ROOFLINES[name]
    return (
        machine(chunked_prefill=True, name=f"{machine().name}-chunked-prefill")
        if chunked_prefill
        else machine()
    )


def tuning_draws(tuning: Trace, gpu, args, **variants) -> list[dict]:
    """The tuning trace on the roofline at every --gpu-batches, --draws request draws each (at
    least twice the batch in requests), with ``sweep``'s variants."""
    rows = []
    for batch in args.gpu_batches:
        n = max(tuning.num_requests, 2 * batch)
        for draw in range(args.draws):
            rows += sweep(
                "tuning pooled",
                tuning,
                gpu,
                False,
                batch,
                n,
                args.steady,
                model=args.model,
                seed=draw,
                **variants,
            )
    return rows


def run_replays(args) -> int:
    cpu = LinearCostModel.load(CPU_COST_PATH)
    line = flat_cpu_line()  # the live flat loop's step (what the live goal measures), batch 8
    gpu = roofline(args.roofline, args.chunked_prefill)
    sources = SMOLLM2_SOURCES if args.model == "smollm2-135m" else SOURCES
    traces = {name: Trace.load(path) for name, path in sources.items() if path.exists()}
    held = [name for name in traces if name not in TUNING]
    rows = []
    variants = {"drain": args.drain, "cost_aware_only": args.cost_aware_only, "end_hazard": args.end_hazard}
    if args.tune_growth or args.tune_probe or args.tune_knee_bracket:  # tuning trace, roofline, --draws
        tuning = pool([traces[n] for n in TUNING if n in traces])  # the tuning sources recorded for the model
        tuned = dict(
            growths=args.tune_growth or (),
            probes=args.tune_probe or (),
            brackets=args.tune_knee_bracket or (),
        )
        rows += tuning_draws(tuning, gpu, args, **tuned, **variants)  # --cost-aware-only etc. too
        return write_replays(args, rows, held, cpu, gpu, line)
    if args.tune_margin or args.tuning_only:  # the tuning trace only: CPU fit at batch 8, roofline
        tuning = pool([traces[n] for n in TUNING if n in traces])  # the tuning sources recorded for the model
        margins = args.tune_margin or ()
        for cost, padded in ((cpu, True), (line, False)):
            rows += sweep(
                "tuning",
                tuning,
                cost,
                padded,
                8,
                None,
                args.steady,
                margins=margins,
                model=args.model,
                **variants,
            )
        rows += tuning_draws(tuning, gpu, args, margins=margins, **variants)
        return write_replays(args, rows, held, cpu, gpu, line)
    for name, trace in {} if args.roofline_only else traces.items():
        label = name + (" (tuned-on)" if name in TUNING else " (held-out)")
        for cost, padded in ((cpu, True), (line, False)):
            rows += sweep(label, trace, cost, padded, 8, None, args.steady, model=args.model, **variants)
    pooled = pool([traces[n] for n in held])
    for batch in args.gpu_batches:
        for draw in range(args.draws):  # draw 0: the requests every single-draw run replayed
            rows += sweep(
                "held-out pooled",
                pooled,
                gpu,
                False,
                batch,
                max(pooled.num_requests, 2 * batch),
                args.steady,
                model=args.model,
                seed=draw,
                **variants,
            )
    return write_replays(args, rows, held, cpu, gpu, line)


def write_replays(args, rows: list[dict], held: list[str], cpu, gpu, line) -> int:
    meta = run_metadata("cpu") | {
        "model": args.model,
        "protocol": {"steady_waves": STEADY_WAVES, "truncate_outputs": STEADY_TRUNCATE}
        if args.steady
        else "burst",
        "held_out": held,
        "tuning": list(TUNING),
        "cost_models": {"cpu": cpu.to_json(), "cpu_flat": line.to_json(), "gpu": gpu.to_json()},
    }
    out = args.out
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    plot(rows, out.with_name(out.name + ".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.name}.png")
    return 0


def live_once(target, tokenizer, prompts, name, make_policy, estimator, args, reference, flat=False) -> dict:
    from tetris_ext.decoding import generate

    cfg = {"max_draft": MAX_DRAFT, "max_ngram": 4, "min_ngram": 1}
    policy = make_policy()
    drafter = drafter_for(cfg, estimator) if policy.num_draft(args.batch) > 0 else None
    result = generate(
        target,
        prompts,
        policy,
        drafter,
        max_new_tokens=args.max_new_tokens,
        max_batch_size=args.batch,
        eos_token_id=tokenizer.eos_token_id,
        flat=flat,
    )
    s = result.stats
    # bfloat16 rounding can flip a greedy token between a wide block and a one-token step
    # (bench/e2e.py --dtype says more): count the outputs equal to the autoregressive ones.
    same = sum(a == b for a, b in zip(result.tokens, reference or result.tokens))
    return {
        "policy": name + (" [flat]" if flat else ""),
        "flat": flat,
        "same_output": f"{same}/{len(prompts)}",
        "tokens": s["generated_tokens"],
        "tok_per_cpu_s": s["generated_tokens"] / s["cpu_seconds"],
        "tok_per_wall_s": s["generated_tokens"] / s["wall_seconds"],
        "cpu_seconds": s["cpu_seconds"],
        "wall_seconds": s["wall_seconds"],
        "prefill_seconds": s.get("prefill_seconds", 0.0),
        "prefill_cpu_seconds": s["prefill_cpu_seconds"],
        # Prefill is the same work for every policy: tokens per CPU second of decoding alone
        # tell the policies apart without that shared cost.
        "tok_per_decode_cpu_s": s["generated_tokens"] / (s["cpu_seconds"] - s["prefill_cpu_seconds"]),
        "steps": s["steps"],
        "vsr": s["accepted_tokens"] / max(1, s["verified_tokens"]),
    }, result.tokens


def run_live(args) -> int:
    """Every chosen policy once per round, rounds back to back (so that a slow spell of the
    shared machine hits all policies alike); each row is the round with the lower median of
    tokens per CPU second (of two rounds: the slower one), and lists every round's figure.
    Each round starts further along the list of policies (`round_order`), so that no policy
    runs at the same point of every round: a drift within a round (the process's memory, a
    neighbour on the shared machine) would otherwise favour the policies listed first. Round 0
    runs the list as given, the autoregressive reference first."""
    from sim import load_target

    from tetris_ext.decoding import generate

    torch.set_num_threads(1)
    target, tokenizer = load_target(args.dtype)
    path = Path(f"bench/prompts/estimates_{args.source}.jsonl")
    prompts = [
        tokenizer(json.loads(line)["prompt"]).input_ids for line in path.read_text().splitlines() if line
    ]
    generate(target, prompts[:1], Autoregressive(), max_new_tokens=2)  # warm-up
    known = LinearCostModel.load(CPU_COST_PATH)  # fitted on this CPU's step times (bundled prompts)
    chosen = {
        n: v
        for n, v in policies(True, known).items()
        if (n in args.only if args.only else "known cost" not in n) or n == "Autoregressive"
    }
    variants = {name: {False: v} for name, v in chosen.items()}
    if args.flat or args.flat_only:  # each policy on the flat loop too, a cost-aware budget priced for it
        flat_policies = policies(False, known)
        for name in chosen:
            variants[name] = ({} if args.flat_only else variants[name]) | {True: flat_policies[name]}
    rounds, reference = {}, None
    for round_ in range(args.repeat):
        for name, by_loop in round_order(list(variants.items()), round_, args.repeat):
            # padded and flat back to back, alternating which goes first
            for flat in sorted(by_loop, reverse=round_ % 2 == 1):
                make_policy, estimator = by_loop[flat]
                row, tokens = live_once(
                    target, tokenizer, prompts, name, make_policy, estimator, args, reference, flat
                )
                reference = reference or tokens
                rounds.setdefault(row["policy"], []).append(row | {"round": round_})
                print(rounds[row["policy"]][-1], flush=True)
    rows = []
    for runs in rounds.values():
        ranked = sorted(runs, key=lambda r: r["tok_per_cpu_s"])
        rows.append(
            ranked[(len(ranked) - 1) // 2]
            | {
                "rounds_tok_per_cpu_s": [r["tok_per_cpu_s"] for r in runs],
                "rounds_tok_per_wall_s": [r["tok_per_wall_s"] for r in runs],
            }
        )
    compare_live_rows(rows, rounds)
    table = format_table(
        rows,
        [
            ("policy", "policy"),
            ("tok_per_cpu_s", "tok/CPU s"),
            ("vs_best_baseline_cpu", "vs best"),
            ("vs_best_baseline_cpu_range", "rounds vs best"),
            ("tok_per_decode_cpu_s", "tok/decode CPU s"),
            ("vs_best_baseline_decode_cpu", "vs best"),
            ("tok_per_wall_s", "tok/wall s"),
            ("cpu_seconds", "CPU s"),
            ("wall_seconds", "wall s"),
            ("vsr", "VSR"),
            ("steps", "steps"),
            ("same_output", "same"),
        ]
        + (
            [("flat_vs_padded_cpu_s", "flat/padded"), ("flat_vs_padded_decode_cpu_s", "flat/padded decode")]
            if args.flat and not args.flat_only
            else []
        ),
    )
    print(table)
    out = args.out.with_name(
        f"{args.out.name}_live{'_flat' if args.flat or args.flat_only else ''}_{args.source}_b{args.batch}"
    )
    meta = run_metadata("cpu") | {"repeat": args.repeat, "prompts": len(prompts)}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    if args.flat or args.flat_only:
        out.with_suffix(".txt").write_text(f"{meta['command']}\n{table}\n")
    print(f"wrote {out}.json")
    return 0


def round_order(policies: list, round_: int, rounds: int) -> list:
    """The policies in the order round ``round_`` of ``rounds`` runs them: the list started
    ``round_ x len / rounds`` along (round 0 as given), so each policy runs at another point of
    each round (run_live)."""
    start = round_ * len(policies) // rounds
    return policies[start:] + policies[:start]


def compare_live_rows(rows: list[dict], rounds: dict) -> None:
    """Each row against the best baseline of its own loop (padded or flat), and the same ratio
    round by round (paired: each round's runs share a spell of the shared machine; their range
    says how far one figure can be trusted); a flat row also against the same policy on the
    padded loop, round by round, median over rounds."""
    for flat in {r["flat"] for r in rows}:
        loop = [r for r in rows if r["flat"] == flat]
        baselines = [r for r in loop if not r["policy"].startswith(RECOMMENDED)]
        best = max(baselines, key=lambda r: r["tok_per_cpu_s"])
        best_decode = max(baselines, key=lambda r: r["tok_per_decode_cpu_s"])
        for r in loop:
            r["vs_best_baseline_cpu"] = r["tok_per_cpu_s"] / best["tok_per_cpu_s"]
            r["vs_best_baseline_decode_cpu"] = r["tok_per_decode_cpu_s"] / best_decode["tok_per_decode_cpu_s"]
            r["vs_best_baseline_wall"] = r["tok_per_wall_s"] / best["tok_per_wall_s"]
            per_round = [
                mine["tok_per_cpu_s"] / theirs["tok_per_cpu_s"]
                for mine, theirs in zip(rounds[r["policy"]], rounds[best["policy"]])
            ]
            r["vs_best_baseline_cpu_rounds"] = per_round
            r["vs_best_baseline_cpu_range"] = f"{min(per_round):.3f}-{max(per_round):.3f}"
    for r in rows:
        padded = rounds.get(r["policy"].removesuffix(" [flat]")) if r["flat"] else None
        if padded:
            for key in ("tok_per_cpu_s", "tok_per_decode_cpu_s"):
                ratios = [f[key] / p[key] for f, p in zip(rounds[r["policy"]], padded)]
                r[f"flat_vs_padded_{key.removeprefix('tok_per_')}"] = float(np.median(ratios))


def add_variant_flags(ap) -> None:
    """Replay flags for side-by-side runs of cost-aware variants (--drain, --end-hazard,
    --cost-aware-only)."""
    ap.add_argument(
        "--end-hazard",
        nargs="*",
        type=float,
        metavar="PRIOR",
        help="replay: the cost-aware policies also with end_hazard=False and once per prior in "
        "pseudo-requests (CostAwareTetris(end_prior=))",
    )
    ap.add_argument(
        "--drain",
        action="store_true",
        help="replay: the cost-aware policies also once with drain=False and once with drain=True (tetris_ext.drain)",
    )
    ap.add_argument(
        "--cost-aware-only",
        action="store_true",
        help="replay: no baselines but Autoregressive (a faster side-by-side of cost-aware variants)",
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--live", action="store_true")
    ap.add_argument(
        "--dtype",
        choices=["bfloat16", "float32"],
        default="bfloat16",
        help="--live: the target's dtype (bfloat16, the default, rounds differently in blocks of other "
        "shapes, so policies can decode different text; float32: the same text under every policy)",
    )
    ap.add_argument("--source", default="code", choices=["code", "chat", "rewrite"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument(
        "--model",
        choices=["gemma3-270m", "smollm2-135m"],
        default="gemma3-270m",
        help="replay: whose traces (the step costs stay the Gemma CPU fit and the roofline)",
    )
    ap.add_argument(
        "--only",
        nargs="+",
        help="live: these policies (names as printed) and Autoregressive; "
        f"'CostAwareTetris (known cost) + {ESTIMATOR}' (the fitted CPU cost model) runs only when named",
    )
    ap.add_argument(
        "--repeat", type=int, default=1, help="live: rounds over all policies (the lower median reported)"
    )
    ap.add_argument(
        "--flat",
        action="store_true",
        help="live: every policy on the padded and the flat loop (generate(flat=True)), back to back",
    )
    ap.add_argument(
        "--flat-only",
        action="store_true",
        help="live: every policy on the flat loop only (half the time of --flat, no flat/padded ratio)",
    )
    ap.add_argument("--gpu-batches", type=int, nargs="+", default=[8, 64, 128, 256, 512])
    ap.add_argument(
        "--tune-growth",
        type=float,
        nargs="+",
        help="replay the tuning trace on the roofline only, the online-cost policy once per growth",
    )
    ap.add_argument(
        "--tune-margin",
        type=float,
        nargs="+",
        help="replay the tuning trace only (CPU fit at batch 8, roofline), the cost-aware policies once per margin",
    )
    ap.add_argument(
        "--tune-probe",
        type=float,
        nargs="+",
        help="replay the tuning trace on the roofline only, the online-cost policy once per first-probe fraction",
    )
    ap.add_argument(
        "--tune-knee-bracket",
        type=float,
        nargs="+",
        help="replay the tuning trace on the roofline only, the online-cost policy once per knee bracket",
    )
    ap.add_argument(
        "--draws",
        type=int,
        default=1,
        help="roofline replays per batch, each its own draw of the requests (the tuning trace's with --tune-* / "
        "--tuning-only, else the pooled held-out trace's; draw 0 is a single-draw run's)",
    )
    add_variant_flags(ap)
    ap.add_argument(
        "--tuning-only",
        action="store_true",
        help="replay the tuning trace only (CPU fit at batch 8, roofline at --gpu-batches): for choices",
    )
    ap.add_argument(
        "--steady",
        action="store_true",
        help="replay: the steady protocol (closed loop, unequal output lengths, steady-window throughput)",
    )
    ap.add_argument(
        "--chunked-prefill",
        action="store_true",
        help="replay: the roofline engine computes joining prompts inside the step's forward (vLLM V1, SGLang)",
    )
    ap.add_argument(
        "--roofline",
        choices=sorted(ROOFLINES),
        default="4xH100-70B",
        help="replay: the GPU machine of the roofline cells (cost_models.ROOFLINES; the policies' "
        "constants were chosen on 4xH100-70B)",
    )
    ap.add_argument(
        "--roofline-only",
        action="store_true",
        help="replay: the held-out roofline cells only (no per-source CPU cells at batch 8)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "cost_aware")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    return run_live(args) if args.live else run_replays(args)


if __name__ == "__main__":
    sys.exit(main())
