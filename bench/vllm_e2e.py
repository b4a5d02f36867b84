"""TETRIS inside vLLM on this CPU: our proposer against vLLM's built-in n-gram and no speculation.

Gemma 3 270M (float32, `tetris_ext.vllm.gemma3_270m_path()`) greedy-decodes two prompt sets:
"code" and "text". By default (``--prompts heldout``) they are the held-out sets of issue 10,
never used for any fit or choice: `bench/prompts/estimates_code.jsonl` (windows of this
repository's source cut mid-function) and `bench/prompts/estimates_chat.jsonl` (instructions in
Gemma's chat format), 16 prompts each. ``--prompts tuning`` runs the bundled prompts instead
(tetris_ext/data/prompts.jsonl split into code-* and the rest): the estimator's prior and the
cost-aware policy's defaults were fitted and chosen on those (as Gemma 3 270M bf16 traces of the
decoding loop), so they are a tuning set, not a test; ``--prompts tuning-files`` runs
`bench/prompts/tuning_{code,chat}.jsonl`, the held-out files' tuning counterparts (same kinds of
prompt, other texts), where choices for the vLLM proposer are made. Each set is queued at once, with more
requests than `max_num_seqs` (a set shorter than 1.5 x max_num_seqs is repeated; prefix caching
is off so that repeats cost what fresh prompts cost). Configurations, per max_num_seqs:

- none:             vLLM without speculation (the baseline of every ratio);
- ngram k:          vLLM's built-in n-gram proposer (prompt_lookup_max=4), k = 1..5;
- sd k:             our proposer, policy "sd" (each request its first k n-gram drafts), k = 1..5;
- tetris k+e:       our proposer, policy "tetris" (best k x requests drafts of the batch), k = 2..4, extra = 1..2;
- goodput:          our proposer, policy "goodput" (k=3, extra=2: budget from the fitted step-time model);
- cost-aware:       our proposer, policy "cost-aware" (up to 5 drafts: floor and budget from the fitted step cost);
- only when named in --configs (``VARIANTS``): "cost-aware min2" .. "sd 3 min4" (the drafter's
  shortest match), "none sync" (no speculation, async scheduling off) and "no drafts" (our
  engine verifying nothing): what speculation's machinery costs by itself.

Our configurations share one in-process engine (num_speculative_tokens = 6, the most any of them
drafts) and switch with `TetrisProposer.configure`; every other configuration has its own engine.
Before anything is timed each engine decodes every set once, untimed (`warm_up`), so that no
configuration is timed on a cold engine while others, served after it, are not.
``--rounds N`` runs every engine N times, round after round, so that each round holds one
measurement of every configuration taken minutes apart: a cell is one 3-8 s run and single
cells spread by 4-14% between runs on this shared CPU, so the summary pairs each configuration
with the round's baseline and reports the median (and range) of the per-round ratios.

Reported per (max_num_seqs, set, configuration, round): output tokens/s (wall) and the ratio to
"none", CPU seconds beside wall seconds (this process: the engine runs in it), engine steps,
accepted and verified drafts per step and their ratio (verification success rate, VSR, from
vLLM's own spec-decode counters), p50 / p99 request latency (all requests submitted at t=0), the
proposer's share of wall time (its `propose` calls, timed around the call), and whether every
output equals the no-speculation output of the same round. Then per configuration the medians
over rounds and the paired ratios to the best built-in n-gram (best by median tok/s). JSON and
PNG under bench/results/.

    .venv-vllm/bin/python bench/vllm_e2e.py            # the full sweep (14 engine starts, 72 decoding runs)
    .venv-vllm/bin/python bench/vllm_e2e.py --quick    # a smoke run (a few minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

from common import cpu_model  # bench/common.py

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine in this process: CPU time, proposer timing

RESULTS = Path(__file__).resolve().parent / "results"


HELD_OUT = {"code": "estimates_code.jsonl", "text": "estimates_chat.jsonl"}
# The held-out files' tuning counterparts (same kinds of prompt, other texts): where choices for
# the vLLM proposer are made (``--prompts tuning-files``).
TUNING_FILES = {"code": "tuning_code.jsonl", "text": "tuning_chat.jsonl"}


def prompt_sets(quick: bool, source: str = "heldout") -> dict[str, list[str]]:
    """{"code": prompts, "text": prompts} from the held-out files, their tuning counterparts or
    the bundled (tuning) set."""
    if source in ("heldout", "tuning-files"):
        folder = Path(__file__).resolve().parent / "prompts"
        sets = {
            name: [json.loads(line)["prompt"] for line in (folder / file).read_text().splitlines() if line]
            for name, file in (HELD_OUT if source == "heldout" else TUNING_FILES).items()
        }
    else:
        rows = [
            json.loads(line)
            for line in resources.files("tetris_ext").joinpath("data/prompts.jsonl").read_text().splitlines()
        ]
        sets = {
            "code": [r["prompt"] for r in rows if r["category"].startswith("code")],
            "text": [r["prompt"] for r in rows if not r["category"].startswith("code")],
        }
    return {name: prompts[:8] for name, prompts in sets.items()} if quick else sets


def configurations(quick: bool) -> list[tuple[str, dict | None]]:
    """(name, what it needs): None = no speculation; {"ngram": k}; {"ours": ProposerOptions kwargs}."""
    if quick:
        return [
            ("none", None),
            ("ngram 3", {"ngram": 3}),
            ("sd 3", {"ours": dict(policy="sd", k=3, extra=0)}),
            ("tetris 3+2", {"ours": dict(policy="tetris", k=3, extra=2)}),
            ("goodput", {"ours": dict(policy="goodput", k=3, extra=2)}),
        ]
    configs = [("none", None)] + [(f"ngram {k}", {"ngram": k}) for k in range(1, 6)]
    configs += [(f"sd {k}", {"ours": dict(policy="sd", k=k, extra=0)}) for k in range(1, 6)]
    configs += [
        (f"tetris {k}+{e}", {"ours": dict(policy="tetris", k=k, extra=e)}) for k in (2, 3, 4) for e in (1, 2)
    ]
    return configs + [
        ("goodput", {"ours": dict(policy="goodput", k=3, extra=2)}),
        ("cost-aware", {"ours": dict(policy="cost-aware", k=3, extra=2)}),
    ]


# Variants run only when named in --configs: the drafter's shortest n-gram match (min_ngram; the
# default 1 drafts from any match, vLLM's built-in n-gram only from prompt_lookup_max tokens) ...
VARIANTS = {
    f"{name} min{m}": {"ours": dict(policy=policy, k=k, extra=e, min_ngram=m)}
    for name, policy, k, e in (("cost-aware", "cost-aware", 3, 2), ("sd 3", "sd", 3, 0))
    for m in (2, 3, 4)
}
# ... and what speculation's machinery costs by itself. vLLM turns async scheduling off for n-gram
# and custom-class proposers (its V1 runner overlaps the next step's scheduling with this step's
# forward only for EAGLE-like methods), so "none sync" is the plain engine without it, and "no
# drafts" our speculative engine verifying nothing (estimates are clamped below 1, so a floor of 1
# drops every draft; the proposer still runs).
VARIANTS["none sync"] = {"async_scheduling": False}
VARIANTS["no drafts"] = {"ours": dict(policy="sd", k=1, extra=0, min_prob=1.0)}


def make_engine(model: str, batch: int, eager: bool, spec: dict | None, async_scheduling: bool | None = None):
    """async_scheduling: None lets vLLM choose (on for a plain engine, off for n-gram / custom drafts)."""
    import vllm

    return vllm.LLM(
        model,
        dtype="float32",
        max_model_len=1024,
        max_num_seqs=batch,
        enforce_eager=eager,
        seed=0,
        enable_prefix_caching=False,
        disable_log_stats=False,
        speculative_config=spec,
        async_scheduling=async_scheduling,
    )


def runner_of(llm):
    return llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner


def time_proposer(llm) -> list[float]:
    """Wrap the engine's proposer so that every `propose` call's seconds are recorded."""
    seconds: list[float] = []
    drafter = getattr(runner_of(llm), "drafter", None)
    if drafter is not None:
        time_drafter(drafter, seconds)
    return seconds


def time_drafter(drafter, seconds: list[float]):
    """The drafter, its `propose` calls now timed into ``seconds``."""
    inner = drafter.propose

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        out = inner(*args, **kwargs)
        seconds.append(time.perf_counter() - t0)
        return out

    drafter.propose = timed
    return drafter


def spec_counters(llm) -> dict[str, float]:
    wanted = {
        "vllm:spec_decode_num_draft_tokens": "verified",
        "vllm:spec_decode_num_accepted_tokens": "accepted",
    }
    out = {v: 0.0 for v in wanted.values()}
    for metric in llm.get_metrics():
        if metric.name in wanted:
            out[wanted[metric.name]] += metric.value
    return out


def run_set(llm, prompts: list[str], batch: int, max_tokens: int, propose_seconds: list[float]) -> dict:
    """All requests queued at t=0; step the engine until done. Returns the run's measurements."""
    import vllm

    engine = llm.llm_engine
    requests = prompts * max(1, -(-(batch * 3 // 2) // len(prompts)))
    params = vllm.SamplingParams(temperature=0, max_tokens=max_tokens)
    before, n_propose = spec_counters(llm), len(propose_seconds)
    cpu0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for i, prompt in enumerate(requests):
        engine.add_request(f"r{i}-{time.monotonic_ns()}", prompt, params)
    finished, steps, tokens = {}, 0, {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = time.perf_counter() - t0
                tokens[out.request_id] = list(out.outputs[0].token_ids)
        steps += 1
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    after = spec_counters(llm)
    order = sorted(tokens, key=lambda rid: int(rid.split("-")[0][1:]))
    latencies = sorted(finished.values())
    verified, accepted = after["verified"] - before["verified"], after["accepted"] - before["accepted"]
    out_tokens = sum(len(t) for t in tokens.values())
    return {
        "requests": len(requests),
        "output_tokens": out_tokens,
        "wall_s": wall,
        "cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
        "tok_per_s": out_tokens / wall,
        "steps": steps,
        "verified_per_step": verified / steps,
        "accepted_per_step": accepted / steps,
        "vsr": accepted / verified if verified else None,
        "latency_p50_s": statistics.median(latencies),
        "latency_p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "propose_share": sum(propose_seconds[n_propose:]) / wall,
        "tokens": [tokens[r] for r in order],
    }


def warm_up(llm, sets: dict[str, list[str]], batch: int, max_tokens: int) -> None:
    """Decode every prompt set once in full, untimed, with the drafter the engine has now.

    A fresh engine pays first-use costs (numba compilation of vLLM's n-gram, allocations, each
    step shape met first). Warmed by two short requests only, the first set (code) of whichever
    configuration an engine timed first ran 12-16% slower in one run than what our shared engine
    timed after it, in every round; since every engine but ours serves one configuration, that
    favoured ours (bench/README.md, "vLLM on an AVX-512 host: a cold first configuration").
    """
    for prompts in sets.values():
        run_set(llm, prompts, batch, max_tokens, [])


def engines_for(batch: int, configs) -> list[tuple[dict, list[str]]]:
    """(make_engine's options, the configurations that engine serves) for one max_num_seqs."""
    from tetris_ext.vllm import speculative_config
    from tetris_ext.vllm.config import ProposerOptions

    engines: list[tuple[dict, list[str]]] = [({"spec": None}, ["none"])]
    engines += [
        ({"spec": None, "async_scheduling": False}, [n]) for n, c in configs if c and "async_scheduling" in c
    ]
    engines += [
        ({"spec": {"method": "ngram", "num_speculative_tokens": c["ngram"], "prompt_lookup_max": 4}}, [n])
        for n, c in configs
        if c and "ngram" in c
    ]
    ours = [n for n, c in configs if c and "ours" in c]
    if ours:
        most = max(ProposerOptions(**dict(configs)[n]["ours"]).max_drafts for n in ours)
        engines.append(({"spec": speculative_config("tetris", k=1, extra=most - 1)}, ours))
    return engines


def run_engine(job: dict) -> list[dict]:
    """One engine (in this process) and every configuration it serves, on every prompt set."""
    from tetris_ext.vllm import gemma3_270m_path
    from tetris_ext.vllm.config import ProposerOptions
    from tetris_ext.vllm.proposer import find_proposer

    configs, sets, batch = dict(job["configs"]), job["sets"], job["batch"]
    t0 = time.perf_counter()
    llm = make_engine(gemma3_270m_path(), batch, job["eager"], **job["engine"])
    start_s = time.perf_counter() - t0
    first = configs[job["names"][0]]
    if first and "ours" in first:
        find_proposer(llm).configure(ProposerOptions(**first["ours"]))
    warm_up(llm, sets, batch, job["max_tokens"])
    seconds = time_proposer(llm)
    rows = []
    for name in job["names"]:
        if configs[name] and "ours" in configs[name]:
            find_proposer(llm).configure(ProposerOptions(**configs[name]["ours"]))
        for set_name, prompts in sets.items():
            row = {"config": name, "max_num_seqs": batch, "set": set_name, "round": job.get("round", 0)}
            row["engine_start_s"] = start_s
            row |= run_set(llm, prompts, batch, job["max_tokens"], seconds)
            rows.append(row)
            print(_line(row), flush=True)
    return rows


def sweep(args) -> list[dict]:
    """Each engine in a fresh process: vLLM 0.32 cannot start a CPU engine in a process where its
    numba n-gram proposer already ran (its Triton-override scan trips over llvmlite objects)."""
    from tetris_ext.vllm import gemma3_270m_path

    gemma3_270m_path()  # convert once, before the engines
    sets, configs = prompt_sets(args.quick, args.prompts), configurations(args.quick)
    if args.configs:  # a subset (always with "none", the baseline of every ratio)
        configs = [(n, c) for n, c in configs if n == "none" or n in args.configs]
        configs += [(n, c) for n, c in VARIANTS.items() if n in args.configs]
    rows = []
    for round_, batch in ((r, b) for r in range(args.rounds) for b in args.batch_sizes):
        for engine, names in engines_for(batch, configs):
            job = {
                "batch": batch,
                "engine": engine,
                "names": names,
                "configs": configs,
                "sets": sets,
                "eager": args.eager,
                "max_tokens": args.max_tokens,
                "round": round_,
            }
            with tempfile.TemporaryDirectory() as tmp:
                job_file, out_file = Path(tmp) / "job.json", Path(tmp) / "rows.json"
                job_file.write_text(json.dumps(job))
                subprocess.run(
                    [sys.executable, __file__, "--engine-job", str(job_file), str(out_file)], check=True
                )
                rows += json.loads(out_file.read_text())
    return rows


def _line(r: dict) -> str:
    vsr = "-" if r["vsr"] is None else f"{r['vsr']:.2f}"
    return (
        f"round {r.get('round', 0)} B={r['max_num_seqs']:<3} {r['set']:<5} {r['config']:<11} {r['tok_per_s']:7.1f} tok/s "
        f"wall {r['wall_s']:6.1f}s cpu {r['cpu_s']:6.1f}s steps {r['steps']:4d} acc/step {r['accepted_per_step']:5.2f} "
        f"ver/step {r['verified_per_step']:5.2f} VSR {vsr:>4} p50 {r['latency_p50_s']:5.1f}s p99 {r['latency_p99_s']:5.1f}s "
        f"propose {100 * r['propose_share']:4.1f}%"
    )


def _same_round_none(rows: list[dict], r: dict) -> dict:
    return next(
        b
        for b in rows
        if b["config"] == "none"
        and b["set"] == r["set"]
        and b["max_num_seqs"] == r["max_num_seqs"]
        and b.get("round", 0) == r.get("round", 0)
    )


def medians(rows: list[dict]) -> list[dict]:
    """Per (max_num_seqs, set, configuration): median tok/s and ratio to "none" over rounds, the
    range of tok/s, and the median / range of the per-round ratios to the best built-in n-gram
    (the n-gram configuration with the best median tok/s in that group)."""
    out = []
    for batch, set_name in sorted({(r["max_num_seqs"], r["set"]) for r in rows}):
        group = [r for r in rows if r["max_num_seqs"] == batch and r["set"] == set_name]
        names = list(dict.fromkeys(r["config"] for r in group))
        median_tps = {n: statistics.median(r["tok_per_s"] for r in group if r["config"] == n) for n in names}
        ngrams = [n for n in names if n.startswith("ngram")]
        best_ngram = max(ngrams, key=median_tps.get) if ngrams else None
        by_round = {(r["config"], r.get("round", 0)): r for r in group}
        for name in names:
            runs = [r for r in group if r["config"] == name]
            ratios = [
                r["tok_per_s"] / by_round[(best_ngram, r.get("round", 0))]["tok_per_s"]
                for r in runs
                if best_ngram and (best_ngram, r.get("round", 0)) in by_round
            ]
            out.append(
                {
                    "max_num_seqs": batch,
                    "set": set_name,
                    "config": name,
                    "rounds": len(runs),
                    "tok_per_s": median_tps[name],
                    "tok_per_s_range": [min(r["tok_per_s"] for r in runs), max(r["tok_per_s"] for r in runs)],
                    "speedup": statistics.median(r["speedup"] for r in runs),
                    "vsr": statistics.median(r["vsr"] for r in runs) if runs[0]["vsr"] is not None else None,
                    "steps": statistics.median(r["steps"] for r in runs),
                    "propose_share": statistics.median(r["propose_share"] for r in runs),
                    "best_ngram": best_ngram,
                    "vs_best_ngram": statistics.median(ratios) if ratios else None,
                    "vs_best_ngram_range": [min(ratios), max(ratios)] if ratios else None,
                }
            )
    return out


def _median_line(m: dict) -> str:
    lo, hi = m["tok_per_s_range"]
    vs = "" if m["vs_best_ngram"] is None else f" vs {m['best_ngram']} {m['vs_best_ngram']:.3f}x"
    if m["vs_best_ngram_range"] is not None and m["rounds"] > 1:
        vs += f" ({m['vs_best_ngram_range'][0]:.3f}-{m['vs_best_ngram_range'][1]:.3f})"
    vsr = "-" if m["vsr"] is None else f"{m['vsr']:.2f}"
    return (
        f"median of {m['rounds']} B={m['max_num_seqs']:<3} {m['set']:<5} {m['config']:<11} "
        f"{m['tok_per_s']:7.1f} tok/s ({lo:.1f}-{hi:.1f}) x{m['speedup']:.2f} none, VSR {vsr:>4}, "
        f"steps {m['steps']:.0f}, propose {100 * m['propose_share']:.1f}%{vs}"
    )


def summarize(rows: list[dict]) -> tuple[list[str], list[dict]]:
    """Ratios to "none" (same set, max_num_seqs and round), output equality, and the medians."""
    for r in rows:
        base = _same_round_none(rows, r)
        r["speedup"] = r["tok_per_s"] / base["tok_per_s"]
        r["same_output"] = r["tokens"] == base["tokens"]
    table = medians(rows)
    lines = [_median_line(m) for m in table]
    bad = [
        f"{r['config']} B={r['max_num_seqs']} {r['set']} round {r.get('round', 0)}"
        for r in rows
        if not r["same_output"]
    ]
    lines.append(
        "outputs identical to no speculation: " + ("all" if not bad else "NOT for " + ", ".join(bad))
    )
    return lines, table


def chart(rows: list[dict], path: Path) -> None:
    """Median speed-up over "none" per configuration (rows: `medians`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["max_num_seqs"], r["set"]) for r in rows})
    fig, axes = plt.subplots(len(groups), 1, figsize=(12, 3.2 * len(groups)), squeeze=False)
    colors = {
        "none": "grey",  # and "none sync"
        "no": "silver",  # "no drafts"
        "ngram": "tab:blue",
        "sd": "tab:orange",
        "tetris": "tab:green",
        "goodput": "tab:red",
        "cost-aware": "tab:purple",
    }
    for ax, (batch, set_name) in zip(axes[:, 0], groups):
        group = [r for r in rows if r["max_num_seqs"] == batch and r["set"] == set_name]
        ax.bar(
            [r["config"] for r in group],
            [r["speedup"] for r in group],
            color=[colors[r["config"].split()[0]] for r in group],
        )
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_ylabel("tok/s vs none")
        ax.set_title(f"max_num_seqs={batch}, {set_name} prompts", fontsize=10)
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: few configurations, 8 prompts per set")
    ap.add_argument(
        "--batch-sizes", type=int, nargs="+", help="max_num_seqs values (default 8 32; --quick: 4)"
    )
    ap.add_argument("--max-tokens", type=int, help="new tokens per request (default 64; --quick: 16)")
    ap.add_argument(
        "--configs", nargs="+", help='only these configurations, e.g. "ngram 3" "tetris 3+2" goodput'
    )
    ap.add_argument(
        "--eager", action="store_true", help="enforce_eager engines (start in ~1 min instead of ~2)"
    )
    ap.add_argument(
        "--out", type=Path, help="result files without suffix (default bench/results/vllm_e2e[_quick])"
    )
    ap.add_argument(
        "--prompts",
        choices=("heldout", "tuning", "tuning-files"),
        default="heldout",
        help="heldout: bench/prompts/estimates_{code,chat}.jsonl (default); tuning: the bundled prompts; "
        "tuning-files: bench/prompts/tuning_{code,chat}.jsonl",
    )
    ap.add_argument(
        "--rounds", type=int, default=1, help="run every engine this many times, round after round"
    )
    ap.add_argument("--engine-job", nargs=2, type=Path, help=argparse.SUPPRESS)  # internal: one engine's runs
    args = ap.parse_args()
    if args.engine_job:
        job_file, out_file = args.engine_job
        out_file.write_text(json.dumps(run_engine(json.loads(job_file.read_text()))))
        return
    args.batch_sizes = args.batch_sizes or ([4] if args.quick else [8, 32])
    args.max_tokens = args.max_tokens or (16 if args.quick else 64)
    out = args.out or RESULTS / ("vllm_e2e_quick" if args.quick else "vllm_e2e")
    t0 = time.time()
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    known = {n for n, _ in configurations(args.quick)} | set(VARIANTS)
    if set(args.configs or ()) - known:  # e.g. ngram 3 unquoted: two names, "ngram" and "3"
        ap.error(f'--configs: unknown {sorted(set(args.configs) - known)}; quote each, e.g. "ngram 3"')
    rows = sweep(args)
    lines, table = summarize(rows)
    print("\n".join(lines))
    import torch
    import vllm

    meta = {
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores (shared)",
        "vllm": vllm.__version__,
        "torch": torch.__version__,
        "model": "Gemma 3 270M float32",
        "max_tokens": args.max_tokens,
        "eager": args.eager,
        "prompts": args.prompts,
        "rounds": args.rounds,
        "total_s": time.time() - t0,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "summary": lines, "medians": table, "rows": rows}, indent=1) + "\n"
    )
    out.with_suffix(".txt").write_text(
        "\n".join(
            [json.dumps(meta)]
            + [_line(r) + f" x{r['speedup']:.2f}" + ("" if r["same_output"] else " DIFFERENT") for r in rows]
            + lines
        )
        + "\n"
    )
    chart(table, out.with_suffix(".png"))
    print(f"wrote {out}.json/.txt/.png")


if __name__ == "__main__":
    main()
