"""Is CostAwareTetris over-cautious on chat-like prompts? A diagnosis on the TUNING trace only.

    python bench/cost_aware_caution.py          # -> results/cost_aware_caution.{json,txt}
    python bench/cost_aware_caution.py --live 3 --out bench/results/cost_aware_caution_live
    python bench/cost_aware_caution.py --group-fit-logs chat-like 2 3 4 6
    python bench/cost_aware_caution.py --shape-cost 31 --out bench/results/cost_aware_caution_shape
    python bench/cost_aware_caution.py --profile chat-like --out bench/results/cost_aware_caution_profile
    python bench/cost_aware_caution.py --engine chat-like 3 --out bench/results/flat_engine_chat-like
    python bench/cost_aware_caution.py --engine chat-like 8 --out bench/results/flat_engine_chat-like_ab \
        --engine-variants "before: per run, gather, holes 1/4" "planned, holes 1/4" \
        --engine-policies "StandardSD(3)" "CostAwareTetris (flat CPU line)"

The bundled trace (bench/results/traces/gemma3-270m-bf16_ngram_d8_t64.npz, the bundled prompts:
the tuning part; nothing held out is read) replayed on a *flat* CPU step cost resembling the
live flat loop's logged line (bench/README.md, "The online fit made stable": about 38 ms +
2.2 ms per computed token, drafting ~2.6 ms a step), split by prompt group: code (code-edit,
code-free, code-pattern) and chat-like (data, free-text, list, summary, text-pattern), and all 32.

1. Per group: StandardSD(k), Tetris(3, 2), ThresholdSD(0.7, 6) and CostAwareTetris (known and
   online cost, margins MARGINS) + NgramLogistic (token classes): throughput over the best
   fixed k of the group, steps, verified and accepted per step, and the floor's median.
2. Calibration of the path estimates (every drafted candidate verified: StandardSD(8), the
   estimator learning online as in the policy) per group and depth, in bins of the estimate
   around the floor (0.35-0.8): observed acceptance against the mean estimate.
3. The per-step logs of live flat-loop runs on the tuning prompts (``fit_logs``): per run the
   decode CPU a step that no policy is told of, and a pooled fit of what a cost-aware step
   costs beyond a fixed-k step of the same size.

The other modes load Gemma 3 270M and run live, one thread (bench/README.md, "Is the
online-cost policy over-cautious on chat?"): --live (StandardSD(3), (4) and the policy per
group, rounds), --group-fit-logs (bench/cost_aware_live_tuning.py's per-step logs on one
group), --shape-cost (packed forwards of one size in 1-8 runs of equal rows), --profile
(cProfile of the engine's uneven-step costs), --engine (the flat loop's CPU a step under
variants of the engine: attention calls per run or planned, compaction thresholds).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cost_aware import drafter_for, flat_cpu_line, ngram_estimator  # noqa: E402
from estimates import SOURCES, prompt_categories, subset  # noqa: E402

from common import RESULTS_DIR, decode_summary, format_table, run_metadata  # noqa: E402
from tetris_ext.cost_aware import MARGIN, CostAwareTetris  # noqa: E402
from tetris_ext.cost_models import LinearCostModel  # noqa: E402
from tetris_ext.policies import StandardSD, Tetris, ThresholdSD  # noqa: E402
from tetris_ext.sim import Trace, replay  # noqa: E402

CODE = ("code-edit", "code-free", "code-pattern")
MARGINS = (0.0, 0.1, 0.2, 0.3, 0.5)
BINS = (0.0, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 1.0)


def policies(cost_model, margins, unseen: float) -> dict:
    runs = {f"StandardSD({k})": (lambda k=k: StandardSD(k), False) for k in range(2, 8)}
    runs["Tetris(3, 2)"] = (lambda: Tetris(3, 2), True)
    runs["ThresholdSD(0.7, 6)"] = (lambda: ThresholdSD(0.7, 6), True)
    for m in margins:
        runs[f"CostAware known, margin {m:g}"] = (
            lambda m=m: CostAwareTetris(8, padded=False, cost_model=cost_model, margin=m),
            True,
        )
        runs[f"CostAware online, margin {m:g}"] = (
            lambda m=m: CostAwareTetris(8, padded=False, margin=m),
            True,
        )
    # The policy priced at a step that misses ``unseen`` seconds of per-step work (the live loop's
    # bookkeeping outside drafting and verification, which no policy is told of).
    lower = flat_cpu_line(cost_model.coef["step"] - unseen, cost_model.coef["query_token"])
    runs[f"CostAware known, {unseen * 1e3:g} ms unseen"] = (
        lambda: CostAwareTetris(8, padded=False, cost_model=lower),
        True,
    )
    return runs


def run_group(label: str, trace: Trace, cost_model, margins, batch: int, unseen: float) -> list[dict]:
    rows = []
    for name, (make, logistic) in policies(cost_model, margins, unseen).items():
        policy = make()
        floors = []
        if isinstance(policy, CostAwareTetris):
            choose = policy.choose

            def logged(proposal, choose=choose, policy=policy, floors=floors):
                selected = choose(proposal)
                floors.append(policy.last_floor)
                return selected

            policy.choose = logged
        estimator = ngram_estimator() if logistic else None
        result = replay(trace, policy, batch, cost_model, drafter=drafter_for(trace, estimator))
        m = result.metrics
        # Runs of adjacent rows verifying as many tokens: one attention call each on the flat loop.
        runs = [1 + sum(a != b for a, b in zip(v, v[1:])) for v in (s["verified"] for s in result.per_step)]
        finite = torch.tensor([f for f in floors if f == f and f > 0], dtype=torch.float64)
        rows.append(
            {
                "group": label,
                "policy": name,
                "throughput": m["throughput_tokens_per_s"],
                "steps": m["steps"],
                "verified_per_step": m["verified_per_step"],
                "accepted_per_step": m["accepted_per_step"],
                "vsr": m["verification_success_rate"],
                "floor_median": float(finite.median()) if len(finite) else float("nan"),
                "runs_per_step": sum(runs) / len(runs),
            }
        )
    best = max((r for r in rows if r["policy"].startswith("StandardSD")), key=lambda r: r["throughput"])
    for r in rows:
        r["vs_best_sd"] = r["throughput"] / best["throughput"]
        r["best_sd"] = best["policy"]
    return rows


def calibration(label: str, trace: Trace, batch: int) -> list[dict]:
    """Path estimate vs outcome of every drafted candidate (StandardSD(8) verifies them all),
    by depth group and estimate bin."""
    free = LinearCostModel({"step": 1.0}, name="unit")
    result = replay(
        trace,
        StandardSD(8),
        batch,
        free,
        keep_steps=False,
        keep_candidates=True,
        drafter=drafter_for(trace, ngram_estimator()),
    )
    c = result.candidates
    p = torch.tensor(c["predicted"], dtype=torch.float64)
    y = torch.tensor(c["accepted"], dtype=torch.float64)
    depth = torch.tensor(c["depth"])
    rows = []
    for lo_d, hi_d, dname in ((1, 1, "1"), (2, 2, "2"), (3, 4, "3-4"), (5, 8, "5-8"), (1, 8, "all")):
        for lo, hi in zip(BINS[:-1], BINS[1:]):
            inside = (depth >= lo_d) & (depth <= hi_d) & (p >= lo) & (p < hi if hi < 1 else p <= hi)
            n = int(inside.sum())
            if n:
                rows.append(
                    {
                        "group": label,
                        "depth": dname,
                        "bin": f"{lo:.2f}-{hi:.2f}",
                        "n": n,
                        "predicted": float(p[inside].mean()),
                        "observed": float(y[inside].mean()),
                    }
                )
    return rows


def fit_logs(paths: list[Path], skip: int = 5) -> tuple[list[dict], dict]:
    """The live flat loop's per-step logs on the tuning prompts (bench/cost_aware_live_tuning.py
    --fit-log bundled): per run, the decode CPU seconds a step that no policy is told of (the
    run's decode CPU per step less its verification forward's thread CPU and drafting), and a
    pooled least-squares fit of the verification forward's CPU seconds on 1, tokens, tokens x
    context and "the step was chosen by CostAwareTetris" (steps from the ``skip``-th, 3-sigma
    outliers out): what a cost-aware step costs beyond a fixed-k step of the same size."""
    runs, x, y = [], [], []
    for path in paths:
        log = json.loads(path.read_text())
        steps, meta = log["steps"], log["meta"]
        cost_aware = meta["policy"].startswith("CostAware")
        generated = sum(map(len, log["outputs"])) if "outputs" in log else 32 * 64  # every prompt ran to 64
        decode_cpu = generated / meta["tok_per_decode_cpu_s"]
        seen = sum(s["verify_cpu_s"] + s["draft_seconds"] for s in steps)
        runs.append(
            {
                "log": path.name,
                "policy": meta["policy"],
                "steps": len(steps),
                "tokens_per_step": sum(s["tokens"] for s in steps) / len(steps),
                "verify_cpu_ms_per_step": 1e3 * sum(s["verify_cpu_s"] for s in steps) / len(steps),
                "decode_cpu_ms_per_step": 1e3 * decode_cpu / len(steps),
                "unseen_ms_per_step": 1e3 * (decode_cpu - seen) / len(steps),
            }
        )
        for s in steps[skip:]:
            x.append([1.0, s["tokens"], s["tokens"] * s["context_tokens"] / 1e3, float(cost_aware)])
            y.append(s["verify_cpu_s"])
    x, y = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)[:, None]
    coef = torch.linalg.lstsq(x, y).solution
    residual = (y - x @ coef).squeeze(1)
    keep = residual.abs() < 3 * residual.std()
    coef = torch.linalg.lstsq(x[keep], y[keep]).solution.squeeze(1)
    rms = float((y[keep].squeeze(1) - x[keep] @ coef).pow(2).mean().sqrt())
    names = ("step_ms", "token_ms", "token_x_1k_context_ms", "cost_aware_step_ms")
    return runs, {k: 1e3 * float(v) for k, v in zip(names, coef)} | {
        "rms_ms": 1e3 * rms,
        "steps": int(keep.sum()),
    }


# Packed forwards of 40 tokens at batch 8 (8 roots + 32 drafts, StandardSD(4)'s step) with the
# rows' sizes in 1 to 8 runs of adjacent equal rows: tetris_ext.packed_attention makes one
# attention call per run and layer.
SHAPES = {
    "1 run: 5 x 8": [5] * 8,
    "2 runs: 4 x 4, 6 x 4": [4, 4, 4, 4, 6, 6, 6, 6],
    "4 runs: 4, 6 alternating in pairs": [4, 4, 6, 6, 4, 4, 6, 6],
    "8 runs: 4, 6 alternating": [4, 6, 4, 6, 4, 6, 4, 6],
    "7 runs: 2..8 sorted": [2, 3, 4, 5, 5, 6, 7, 8],
    "8 runs: 2..8 shuffled": [5, 2, 8, 3, 7, 4, 6, 5],
    "2 runs, 1-token rows: 1 x 4, 9 x 4": [1, 1, 1, 1, 9, 9, 9, 9],
    "3 runs, 1-token rows: 1 x 2, 5 x 4, 9 x 2": [1, 1, 5, 5, 5, 5, 9, 9],
}


def shape_cost(repeat: int, context: tuple[int, int], seed: int = 0) -> list[dict]:
    """CPU ms of one packed verification forward of Gemma 3 270M (bf16, one thread) per row-size
    shape of SHAPES, interleaved in a shuffled order per repeat on one cache (bench/flat_step.py's
    block and timing), medians and the paired ratio to the one-run shape."""
    import random
    import statistics

    from flat_step import BATCH, _block, _timed_forward
    from sim import load_target

    from common import paired_ratio
    from tetris_ext.kv_cache import RaggedKVCache

    model, _ = load_target()
    vocab = model.config.get_text_config().vocab_size
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(context[0], context[1] + 1, (BATCH,), generator=generator)
    times = {name: [] for name in SHAPES}
    with torch.inference_mode():
        cache = RaggedKVCache(model, packed=True)
        cache.append([torch.randint(0, vocab, (int(n),), generator=generator).tolist() for n in lengths])
        names, order = list(SHAPES), random.Random(seed)
        for _ in range(repeat + 1):  # the first round warms up
            order.shuffle(names)
            for name in names:
                block = _block(cache, SHAPES[name], vocab, generator)
                times[name].append(_timed_forward(cache, block, "packed"))
    base = times[next(iter(SHAPES))][1:]
    return [
        {
            "shape": name,
            "sizes": str(SHAPES[name]),
            "median_cpu_ms": 1e3 * statistics.median(t[1:]),
            "vs_one_run": paired_ratio(t[1:], base),
            "contexts": str(lengths.tolist()),
        }
        for name, t in times.items()
    ]


def live_groups(repeat: int, groups=("code", "chat-like"), margins=(MARGIN,)) -> list[dict]:
    """The live flat loop (Gemma 3 270M bf16, one thread, batch 8, 64 new tokens) on each prompt
    group of the bundled (tuning) prompts: StandardSD(3), StandardSD(4) and the default
    CostAwareTetris (online cost) + NgramLogistic (token classes), every policy once per round,
    rounds back to back; decode tokens per CPU second (prefill excluded), steps, VSR."""
    from sim import bundled_prompts, load_target

    from tetris_ext.decoding import generate
    from tetris_ext.drafters import NgramDrafter

    target, tokenizer = load_target()
    prompts, categories = bundled_prompts(tokenizer), prompt_categories("bundled")
    runs = {
        "StandardSD(3)": (lambda: StandardSD(3), None),
        "StandardSD(4)": (lambda: StandardSD(4), None),
    }
    for m in margins:
        name = "CostAwareTetris (online cost)" + ("" if m == MARGIN else f", margin {m:g}")
        runs[name] = (lambda m=m: CostAwareTetris(8, padded=False, margin=m), ngram_estimator())
    rows = []
    for round_ in range(repeat):
        for group in groups:
            part = [p for p, c in zip(prompts, categories) if (c in CODE) == (group == "code")]
            for name, (make, estimator) in runs.items():
                drafter = NgramDrafter(8, 4, 1, calibration=estimator() if estimator else None)
                kwargs = dict(max_new_tokens=64, max_batch_size=8, eos_token_id=tokenizer.eos_token_id)
                s = generate(target, part, make(), drafter, flat=True, **kwargs).stats
                rows.append(
                    {
                        "round": round_,
                        "group": group,
                        "policy": name,
                    }
                    | decode_summary(s)
                )
                print(rows[-1], file=sys.stderr, flush=True)
    for r in rows:
        same = [q for q in rows if q["round"] == r["round"] and q["group"] == r["group"]]
        r["vs_best_sd"] = r["tok_per_decode_cpu_s"] / max(
            q["tok_per_decode_cpu_s"] for q in same if q["policy"].startswith("StandardSD")
        )
    return rows


def group_fit_logs(group: str, ks: list[int]) -> None:
    """bench/cost_aware_live_tuning.py's per-step log (``fit_log``) of the default policy and of
    StandardSD(k) for each of ``ks`` on one prompt group of the bundled prompts, to
    results/cost_aware_caution_fit_log_GROUP_{ca,sdK}.json."""
    import cost_aware_live_tuning as tuning
    from sim import bundled_prompts, load_target

    target, tokenizer = load_target()
    categories = prompt_categories("bundled")
    part = [p for p, c in zip(bundled_prompts(tokenizer), categories) if (c in CODE) == (group == "code")]
    tuning.bundled_prompts = lambda tokenizer: part  # fit_log("bundled") reads the group only
    for k in [None, *ks]:
        out = RESULTS_DIR / f"cost_aware_caution_fit_log_{group}_{'ca' if k is None else f'sd{k}'}.json"
        tuning.fit_log(target, tokenizer, "bundled", k, ngram_estimator(), out)


# (packed_attention.CALL_COST, kv_cache.MAX_HOLE_FRACTION, compaction by an element-wise gather
# as before) of the engine variants --engine compares; CALL_COST None: the module's
ENGINES = {
    "before: per run, gather, holes 1/4": (1e-9, 0.25, True),
    "planned, holes 1/4": (None, 0.25, False),
    "planned, holes 1/8": (None, 0.125, False),
    "planned, holes 1/2": (None, 0.5, False),
}


def engine_ab(group: str, repeat: int, engines=None, policies=None) -> list[dict]:
    """The live flat loop on one prompt group of the tuning prompts under each engine variant of
    ENGINES (attention calls, compaction), every (policy, variant) once per round in a shuffled
    order: decode CPU ms a step, its ratio to the first variant's in the same round, compactions
    a step. Policies that decide from drafts alone (or CostAwareTetris told the flat CPU line)
    would take the same steps under every variant but for bf16 rounding (another key layout sums
    in another order; ``same_output`` says whether the tokens equal the first variant's)."""
    import random

    from flat_step import gather_compact as _gather_compact
    from sim import bundled_prompts, load_target

    from tetris_ext import kv_cache, packed_attention
    from tetris_ext.decoding import generate
    from tetris_ext.drafters import NgramDrafter

    target, tokenizer = load_target()
    categories = prompt_categories("bundled")
    part = [p for p, c in zip(bundled_prompts(tokenizer), categories) if (c in CODE) == (group == "code")]
    known = flat_cpu_line()
    runs = {
        "StandardSD(3)": lambda: StandardSD(3),
        "Tetris(3, 2)": lambda: Tetris(3, 2),
        "CostAwareTetris (flat CPU line)": lambda: CostAwareTetris(8, padded=False, cost_model=known),
        "CostAwareTetris (online cost)": lambda: CostAwareTetris(8, padded=False),
    }
    runs = {name: make for name, make in runs.items() if not policies or name in policies}
    engines = engines or list(ENGINES)
    planned, compact = packed_attention.CALL_COST, kv_cache.RaggedKVCache.maybe_compact
    compactions = [0]

    def counted(cache, max_hole_fraction=None):
        width = cache.width
        if gather_compact:
            _gather_compact(
                cache, kv_cache.MAX_HOLE_FRACTION if max_hole_fraction is None else max_hole_fraction
            )
        else:
            compact(cache, max_hole_fraction)
        compactions[0] += cache.width != width

    configs, rows, order = [(p, e) for p in runs for e in engines], [], random.Random(0)
    kv_cache.RaggedKVCache.maybe_compact = counted
    try:
        for round_ in range(repeat):
            order.shuffle(configs)
            for policy, engine in configs:
                call_cost, kv_cache.MAX_HOLE_FRACTION, gather_compact = ENGINES[engine]
                packed_attention.CALL_COST = planned if call_cost is None else call_cost
                drafter, compactions[0] = NgramDrafter(8, 4, 1, calibration=ngram_estimator()()), 0
                kwargs = dict(
                    max_new_tokens=64, max_batch_size=8, eos_token_id=tokenizer.eos_token_id, flat=True
                )
                result = generate(target, part, runs[policy](), drafter, **kwargs)
                s = result.stats
                decode = s["cpu_seconds"] - s["prefill_cpu_seconds"]
                rows.append({"round": round_, "policy": policy, "engine": engine, "steps": s["steps"]})
                rows[-1] |= {"decode_cpu_ms_per_step": 1e3 * decode / s["steps"], "tokens": result.tokens}
                rows[-1]["compactions_per_step"] = compactions[0] / s["steps"]
                print({k: v for k, v in rows[-1].items() if k != "tokens"}, file=sys.stderr, flush=True)
    finally:
        packed_attention.CALL_COST, kv_cache.MAX_HOLE_FRACTION = planned, 0.25
        kv_cache.RaggedKVCache.maybe_compact = compact
    return _engine_ratios(rows, engines)


def _engine_ratios(rows: list[dict], engines: list[str]) -> list[dict]:
    """Per (policy, engine): median CPU ms a step, steps, the median over rounds of the ratio to
    the first engine of ENGINES in the same round, and whether the outputs equal its outputs."""
    import statistics

    base = engines[0]
    out = []
    for policy in dict.fromkeys(r["policy"] for r in rows):
        for engine in engines:
            mine = sorted(
                (r for r in rows if (r["policy"], r["engine"]) == (policy, engine)), key=lambda r: r["round"]
            )
            ref = sorted(
                (r for r in rows if (r["policy"], r["engine"]) == (policy, base)), key=lambda r: r["round"]
            )
            ratios = [a["decode_cpu_ms_per_step"] / b["decode_cpu_ms_per_step"] for a, b in zip(mine, ref)]
            out.append(
                {
                    "policy": policy,
                    "engine": engine,
                    "steps": "/".join(str(r["steps"]) for r in mine),
                    "decode_cpu_ms_per_step": statistics.median(r["decode_cpu_ms_per_step"] for r in mine),
                    "vs_before": statistics.median(ratios),
                    "ratios": " ".join(f"{x:.3f}" for x in ratios),
                    "compactions_per_step": statistics.median(r["compactions_per_step"] for r in mine),
                    "same_output": all(a["tokens"] == b["tokens"] for a, b in zip(mine, ref)),
                }
            )
    return out


PROFILED = ("packed_attention", "maybe_compact", "_map_layers", "_logits", "_packed_forward", "verify")


def profile_group(group: str) -> list[dict]:
    """cProfile of the live flat loop on one prompt group: StandardSD(3) and the default
    CostAwareTetris, both drafting with NgramLogistic (token classes); cumulative ms per step of
    the functions named in PROFILED (the attention calls, the KV cache's compaction of holes,
    the output head, the packed forward, the verification)."""
    import cProfile
    import pstats

    from sim import bundled_prompts, load_target

    from tetris_ext.decoding import generate
    from tetris_ext.drafters import NgramDrafter

    target, tokenizer = load_target()
    categories = prompt_categories("bundled")
    part = [p for p, c in zip(bundled_prompts(tokenizer), categories) if (c in CODE) == (group == "code")]
    rows = []
    for name, make in (
        ("StandardSD(3)", lambda: StandardSD(3)),
        ("CostAwareTetris", lambda: CostAwareTetris(8, padded=False)),
    ):
        drafter, profile = NgramDrafter(8, 4, 1, calibration=ngram_estimator()()), cProfile.Profile()
        kwargs = dict(max_new_tokens=64, max_batch_size=8, eos_token_id=tokenizer.eos_token_id, flat=True)
        stats = profile.runcall(generate, target, part, make(), drafter, **kwargs).stats
        steps = stats["steps"]
        row = {"policy": name, "steps": steps, "verified_per_step": stats["verified_tokens"] / steps}
        for (file, _, function), (_, _, _, cumulative, _) in pstats.Stats(profile).stats.items():
            if function in PROFILED and ("tetris_ext" in file or function == "packed_attention"):
                row[f"{Path(file).stem}.{function} ms/step"] = 1e3 * cumulative / steps
        rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--margins", type=float, nargs="+", default=list(MARGINS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--intercept-ms", type=float, default=38.0)
    ap.add_argument("--per-token-ms", type=float, default=2.2)
    ap.add_argument("--unseen-ms", type=float, default=4.0)
    ap.add_argument("--skip-calibration", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "cost_aware_caution")
    ap.add_argument(
        "--shape-cost",
        type=int,
        metavar="REPEAT",
        help="instead: time packed forwards of SHAPES (loads Gemma 3 270M), REPEAT rounds",
    )
    ap.add_argument(
        "--group-fit-logs",
        nargs="+",
        metavar="GROUP_THEN_K",
        help="instead: group_fit_logs (e.g. chat-like 2 3 4 6)",
    )
    ap.add_argument("--profile", metavar="GROUP", help="instead: profile_group (code or chat-like)")
    ap.add_argument(
        "--engine", nargs=2, metavar=("GROUP", "REPEAT"), help="instead: engine_ab, REPEAT rounds"
    )
    ap.add_argument("--engine-variants", nargs="+", help="--engine: these of ENGINES (the first is the base)")
    ap.add_argument("--engine-policies", nargs="+", help="--engine: these policies only")
    ap.add_argument("--live", type=int, metavar="REPEAT", help="instead: live_groups, REPEAT rounds")
    ap.add_argument("--live-groups", nargs="+", default=["code", "chat-like"], help="--live: the groups")
    ap.add_argument(
        "--live-margins", type=float, nargs="+", default=[MARGIN], help="--live: the policy's margins"
    )
    ap.add_argument("--context", type=int, nargs=2, default=[80, 160], help="--shape-cost: context range")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.group_fit_logs:
        group_fit_logs(args.group_fit_logs[0], [int(k) for k in args.group_fit_logs[1:]])
        return 0
    if args.shape_cost or args.live or args.profile or args.engine:
        if args.engine:
            rows = engine_ab(args.engine[0], int(args.engine[1]), args.engine_variants, args.engine_policies)
        elif args.profile:
            rows = profile_group(args.profile)
        else:
            rows = (
                shape_cost(args.shape_cost, tuple(args.context))
                if args.shape_cost
                else live_groups(args.live, args.live_groups, args.live_margins)
            )
        text = format_table(rows, [(k, k) for k in rows[0]])
        print(text)
        args.out.with_suffix(".txt").write_text(text + "\n")
        args.out.with_suffix(".json").write_text(
            json.dumps({"meta": run_metadata("cpu"), "rows": rows}, indent=1)
        )
        return 0
    trace = Trace.load(SOURCES["bundled"])
    categories = prompt_categories("bundled")
    groups = {
        "code": [r for r, c in enumerate(categories) if c in CODE],
        "chat-like": [r for r, c in enumerate(categories) if c not in CODE],
        "all": list(range(len(categories))),
    }
    cost_model = flat_cpu_line(args.intercept_ms / 1e3, args.per_token_ms / 1e3)
    rows, calib = [], []
    for label, members in groups.items():
        t0 = time.perf_counter()
        part = subset(trace, members)
        rows += run_group(label, part, cost_model, args.margins, args.batch, args.unseen_ms / 1e3)
        if not args.skip_calibration:
            calib += calibration(label, part, args.batch)
        print(f"{label}: {len(members)} prompts, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    columns = [
        (k, k)
        for k in ("group", "policy", "throughput", "vs_best_sd", "steps", "verified_per_step")
        + ("accepted_per_step", "vsr", "floor_median", "runs_per_step")
    ]
    text = f"cost model: {cost_model.name}, batch {args.batch}\n\n" + format_table(rows, columns)
    if calib:
        text += "\n\ncalibration of path estimates (StandardSD(8) verifies every candidate)\n\n"
        text += format_table(calib, [(k, k) for k in ("group", "depth", "bin", "n", "predicted", "observed")])
    fitted = {}
    for name, pattern in (
        ("bundled", "cost_aware*fit_log_bundled*.json"),
        ("chat-like", "cost_aware_caution_fit_log_chat-like_*.json"),
    ):
        logs = sorted(RESULTS_DIR.glob(pattern))
        if not logs:
            continue
        runs, pooled = fit_logs(logs)
        fitted[name] = {"runs": runs, "pooled": pooled}
        text += f"\n\nlive flat loop, tuning prompts ({name}): per-step logs\n\n"
        text += format_table(runs, [(k, k) for k in runs[0]])
        text += "\n\npooled fit of the verification forward's CPU ms: " + ", ".join(
            f"{k} {v:.3g}" for k, v in pooled.items()
        )
    print(text)
    args.out.with_suffix(".txt").write_text(text + "\n")
    meta = run_metadata("cpu")
    payload = {"meta": meta, "cost_model": cost_model.to_json(), "rows": rows, "calibration": calib}
    payload["fit_logs"] = fitted
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
