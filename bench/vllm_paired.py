"""vLLM's built-in n-gram proposer and ours in one engine, run after run: paired ratios.

`bench/vllm_e2e.py` runs vLLM's built-in n-gram in an engine of its own (as users configure it)
and ours in another; a run of a prompt set takes 2.5-7 s, and on this shared CPU separate engines
(separate processes, minutes apart) spread by 4-15%, which is as large as the differences being
measured. Here one engine (`speculative_config` of our proposer, `num_speculative_tokens` the
most any configuration drafts) serves every configuration: before each run the model runner's
drafter is set to vLLM's own `NgramProposer` (prompt_lookup_min = prompt_lookup_max = 4, as
`vllm_e2e.py` configures it, asked for k drafts a request), to our proposer with its options, or
to a drafter that proposes nothing ("no drafts": autoregressive steps inside this speculative
engine, which still pay its spec-decode bookkeeping; not vLLM without speculation).
The engine, the model, the attention backend and the step code are the same for both, so a
configuration's run and the baseline's, seconds apart, differ only in the drafts and the
proposer's own time. ``--rounds N`` repeats every configuration N times, interleaved; reported
per (set, configuration): median tok/s, and the median and range of the per-round ratio to the
best built-in n-gram of the same round (best by median tok/s).

What this does not measure: the engine with ``method="ngram"`` as users configure it (its own
engine, its own `num_speculative_tokens`): `vllm_e2e.py` does.

    .venv-vllm/bin/python bench/vllm_paired.py --batch 8 --rounds 5 --prompts heldout \
        --out bench/results/vllm_paired_b8_heldout
    python bench/vllm_paired.py --ratios-of bench/results/vllm_paired_b8_heldout.json --against "sd 3"

The second command (no engine, no vLLM needed) divides each round by another configuration of
the same round: our `sd 3` separates what the selection adds from what our drafter adds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the proposer must live in this process
sys.path.insert(0, str(Path(__file__).resolve().parent))

import vllm_e2e  # noqa: E402  (bench/vllm_e2e.py: the engine, prompt sets and one run of a set)

from common import cpu_model  # noqa: E402

# name -> ("builtin", k) for vLLM's n-gram asked for k drafts, ("ours", ProposerOptions kwargs), or
# ("none", 0): no drafts at all (autoregressive steps in this speculative engine; not the
# engine without speculation, whose steps skip the spec-decode bookkeeping)
CONFIGS = {
    "no drafts": ("none", 0),
    "ngram 1": ("builtin", 1),
    "ngram 2": ("builtin", 2),
    "ngram 3": ("builtin", 3),
    "ngram 4": ("builtin", 4),
    "ngram 5": ("builtin", 5),
    "sd 3": ("ours", dict(policy="sd", k=3, extra=0)),
    "tetris 3+2": ("ours", dict(policy="tetris", k=3, extra=2)),
    "cost-aware": ("ours", dict(policy="cost-aware", k=3, extra=2)),
}


class NoDrafts:
    """A drafter that proposes nothing."""

    def propose(self, sampled_token_ids, num_tokens_no_spec, token_ids_cpu, slot_mappings=None):
        return [[] for _ in sampled_token_ids]


class BuiltinNgram:
    """vLLM's `NgramProposer` behind the call a custom_class drafter receives, asked for k drafts."""

    def __init__(self, vllm_config, k: int, lookup: int = 4):
        from vllm.v1.spec_decode.ngram_proposer import NgramProposer

        # Only what NgramProposer reads, in a view of its own: assigning to the engine's
        # (pydantic) config would re-validate it and could change the running engine.
        config = SimpleNamespace(
            speculative_config=SimpleNamespace(
                prompt_lookup_min=lookup,
                prompt_lookup_max=lookup,
                num_speculative_tokens=vllm_config.speculative_config.num_speculative_tokens,
            ),
            model_config=SimpleNamespace(max_model_len=vllm_config.model_config.max_model_len),
            scheduler_config=SimpleNamespace(max_num_seqs=vllm_config.scheduler_config.max_num_seqs),
            parallel_config=SimpleNamespace(
                tensor_parallel_size=vllm_config.parallel_config.tensor_parallel_size
            ),
        )
        self.inner, self.k = NgramProposer(config), k

    def propose(self, sampled_token_ids, num_tokens_no_spec, token_ids_cpu, slot_mappings=None):
        return self.inner.propose(self.k, sampled_token_ids, num_tokens_no_spec, token_ids_cpu)


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for set_name in dict.fromkeys(r["set"] for r in rows):
        group = [r for r in rows if r["set"] == set_name]
        names = list(dict.fromkeys(r["config"] for r in group))
        median_tps = {n: statistics.median(r["tok_per_s"] for r in group if r["config"] == n) for n in names}
        best = max((n for n in names if CONFIGS[n][0] == "builtin"), key=median_tps.get)
        for name in names:
            runs = [r for r in group if r["config"] == name]
            ratios = per_round_ratios(group, name, best)
            out.append(
                {
                    "set": set_name,
                    "config": name,
                    "rounds": len(runs),
                    "tok_per_s": median_tps[name],
                    "cpu_s": statistics.median(r["cpu_s"] for r in runs),
                    "steps": statistics.median(r["steps"] for r in runs),
                    "verified_per_step": statistics.median(r["verified_per_step"] for r in runs),
                    "vsr": statistics.median([r["vsr"] for r in runs if r["vsr"] is not None] or [math.nan]),
                    "propose_share": statistics.median(r["propose_share"] for r in runs),
                    "best_builtin": best,
                    "vs_best_builtin": statistics.median(ratios),
                    "vs_best_builtin_range": [min(ratios), max(ratios)],
                    "same_output": all(r["tokens"] == runs[0]["tokens"] for r in runs),
                }
            )
    return out


def per_round_ratios(group: list[dict], name: str, against: str) -> list[float]:
    """``name``'s tok/s over ``against``'s of the same round, round by round, from one set's rows
    (the same spell of the shared machine: a round's two runs are seconds apart)."""
    base = {r["round"]: r["tok_per_s"] for r in group if r["config"] == against}
    if not base:
        present = ", ".join(dict.fromkeys(r["config"] for r in group))
        raise ValueError(f"against={against!r}: no such configuration in the run (it has: {present})")
    return [r["tok_per_s"] / base[r["round"]] for r in group if r["config"] == name]


def ratios_to(rows: list[dict], against: str) -> list[str]:
    """Per (set, configuration): the median and range of the per-round tok/s ratio to ``against``
    (e.g. "sd 3": our drafter without selection), from a run's rows."""
    lines = []
    for set_name in dict.fromkeys(r["set"] for r in rows):
        group = [r for r in rows if r["set"] == set_name]
        for name in dict.fromkeys(r["config"] for r in group):
            ratios = per_round_ratios(group, name, against)
            lines.append(
                f"{set_name:<5} {name:<11} vs {against} {statistics.median(ratios):.3f}x "
                f"({min(ratios):.3f}-{max(ratios):.3f}, {len(ratios)} rounds)"
            )
    return lines


def line(m: dict) -> str:
    lo, hi = m["vs_best_builtin_range"]
    return (
        f"{m['set']:<5} {m['config']:<11} {m['tok_per_s']:7.1f} tok/s cpu {m['cpu_s']:5.1f}s steps {m['steps']:4.0f} "
        f"ver/step {m['verified_per_step']:5.2f} VSR {m['vsr']:.2f} propose {100 * m['propose_share']:4.1f}% "
        f"vs {m['best_builtin']} {m['vs_best_builtin']:.3f}x ({lo:.3f}-{hi:.3f}, {m['rounds']} rounds)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8, help="max_num_seqs")
    ap.add_argument("--prompts", choices=("heldout", "tuning", "tuning-files"), default="heldout")
    ap.add_argument("--sets", nargs="+", choices=("code", "text"), default=["code", "text"])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    ap.add_argument("--out", type=Path, help="path prefix of the .json and .txt")
    ap.add_argument(
        "--ratios-of", type=Path, help="no run: print a saved run's (.json) per-round ratios to --against"
    )
    ap.add_argument("--against", default="sd 3", help="the configuration --ratios-of divides by")
    args = ap.parse_args()
    if args.ratios_of:
        try:
            print("\n".join(ratios_to(json.loads(args.ratios_of.read_text())["rows"], args.against)))
        except ValueError as e:
            ap.error(str(e))  # names the argument and the run's configurations
        return
    if args.out is None:
        ap.error("--out is required for a run")
    if not any(CONFIGS[n][0] == "builtin" for n in args.configs):
        ap.error("--configs needs at least one built-in n-gram (the baseline of every ratio)")

    import vllm

    from tetris_ext.vllm import gemma3_270m_path, speculative_config
    from tetris_ext.vllm.config import ProposerOptions
    from tetris_ext.vllm.proposer import find_proposer

    most = max(
        ProposerOptions(**c).max_drafts if kind == "ours" else max(1, c)
        for kind, c in (CONFIGS[n] for n in args.configs)
    )
    llm = vllm_e2e.make_engine(
        gemma3_270m_path(), args.batch, True, speculative_config("tetris", k=1, extra=most - 1)
    )
    sets = {s: p for s, p in vllm_e2e.prompt_sets(False, args.prompts).items() if s in args.sets}
    runner, ours = vllm_e2e.runner_of(llm), find_proposer(llm)
    seconds: list[float] = []
    vllm_config = llm.llm_engine.vllm_config

    def drafter(kind: str, arg):
        if kind == "ours":
            return ours  # timed once, below: every configuration of ours is the same object
        return vllm_e2e.time_drafter(
            BuiltinNgram(vllm_config, arg) if kind == "builtin" else NoDrafts(), seconds
        )

    drafters = {name: drafter(*CONFIGS[name]) for name in args.configs}
    vllm_e2e.time_drafter(ours, seconds)
    warm = vllm.SamplingParams(temperature=0, max_tokens=8)
    for name in args.configs:  # untimed warm-up of every drafter (numba compilation, allocations)
        runner.drafter = drafters[name]
        llm.generate(next(iter(sets.values()))[:2], warm, use_tqdm=False)
    vllm_e2e.warm_up(llm, sets, args.batch, args.max_tokens)  # and of the engine's step shapes
    rows = []
    for round_ in range(args.rounds):
        for name in args.configs:
            kind, options = CONFIGS[name]
            runner.drafter = drafters[name]
            if kind == "ours":
                ours.configure(ProposerOptions(**options))  # fresh state, as in vllm_e2e.py
            for set_name, prompts in sets.items():
                row = {"config": name, "set": set_name, "round": round_}
                row |= vllm_e2e.run_set(llm, prompts, args.batch, args.max_tokens, seconds)
                rows.append(row)
                print(
                    f"round {round_} {set_name:<5} {name:<11} {row['tok_per_s']:7.1f} tok/s steps {row['steps']:4d}",
                    flush=True,
                )
    table = summarize(rows)
    lines = [line(m) for m in table]
    same = all(m["same_output"] for m in table) and all(
        r["tokens"] == next(b for b in rows if b["set"] == r["set"])["tokens"] for r in rows
    )
    lines.append("outputs identical across configurations and rounds: " + ("yes" if same else "NO"))
    header = {
        "command": "python " + " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores (shared)",
        "vllm": vllm.__version__,
        "max_num_seqs": args.batch,
        "prompts": args.prompts,
        "max_tokens": args.max_tokens,
    }
    print("\n".join(lines))
    args.out.with_suffix(".txt").write_text(json.dumps(header) + "\n" + "\n".join(lines) + "\n")
    for r in rows:
        r.pop("tokens")
    args.out.with_suffix(".json").write_text(json.dumps(header | {"rows": rows, "summary": table}, indent=1))


if __name__ == "__main__":
    main()
