"""Where a speculative step's time goes with the Qwen2.5-Coder pair (1.5B target, 0.5B draft).

    python bench/qwen_step_profile.py --dtype bfloat16 --source code --prompts 8 --max-new-tokens 32 \
        --policies AR SD3 T31 --out bench/results/qwen_step_profile

Runs the live loop (``decoding.generate``) once per policy with timers wrapped around the
pieces of a step, without changing them (wrappers only measure): the draft model's forwards
(split into the catch-up on accepted tokens and the chain / tree feeds; decoder, output head
and attention-mask building separately; query tokens per forward), the draft probabilities
(``draft_cumprod``), the policy's selection, the verification block, the target's forward
(decoder, head, mask), the acceptance ops, the KV-cache rollback and compaction, and the rest
(Python bookkeeping, the stop checks of ``Request.advance``, statistics, the policy's
feedback) as the difference to the step's total. Then, on the same process, thread count and
batch, the *isolated* forward costs: the draft's and the target's decoder + head on a
prefilled batch of the same prompts, for 1, 2 and 4 query tokens per row, interleaved.

Writes ``<out>.json`` (per policy: per step averages of every piece, wall and CPU seconds) and
prints a table. Every timer reads both the wall clock and the process CPU clock.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, run_metadata, write_json  # noqa: E402
from tetris_ext import decoding, drafters, engine, kv_cache, ops  # noqa: E402
from tetris_ext.decoding import generate  # noqa: E402
from tetris_ext.drafters import ModelDrafter  # noqa: E402
from tetris_ext.policies import Autoregressive, GoodputTetris, StandardSD, Tetris  # noqa: E402

POLICIES = {
    "AR": Autoregressive,
    **{f"SD{k}": (lambda k=k: StandardSD(k)) for k in range(1, 6)},
    **{f"T{k}{e}": (lambda k=k, e=e: Tetris(k, e)) for k in range(1, 6) for e in range(1, 5)},
    "GT5": lambda: GoodputTetris(5),
}


class Timers:
    """Named accumulators of calls, query tokens, wall and CPU seconds."""

    def __init__(self):
        self.data = defaultdict(lambda: {"calls": 0, "tokens": 0, "wall": 0.0, "cpu": 0.0})

    @contextlib.contextmanager
    def time(self, name: str, tokens: int = 0):
        w, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            d = self.data[name]
            d["calls"] += 1
            d["tokens"] += tokens
            d["wall"] += time.perf_counter() - w
            d["cpu"] += time.process_time() - c


@contextlib.contextmanager
def instrumented(timers: Timers, draft_model, target_model):
    """Wrap the step's pieces with timers; everything is restored on exit."""
    patches = []

    def patch(owner, name, make):
        original = getattr(owner, name)
        patches.append((owner, name, original))
        setattr(owner, name, make(original))

    def who(model) -> str:
        return "draft" if model is draft_model else "target" if model is target_model else "other"

    # The draft cache's append is the catch-up on accepted tokens (the first draft forward);
    # the target's is the prefill of joining requests.
    state = {"phase": None}

    def forward(orig):
        def wrapped(self, tokens, positions, block_mask, extra=None, logits_at=None):
            kind = who(self.model) + "." + (state["phase"] or "feed")
            with timers.time(kind + ".forward", tokens.numel()):
                return orig(self, tokens, positions, block_mask, extra, logits_at)

        return wrapped

    def append(orig):
        def wrapped(self, sequences, last_logits=False):
            state["phase"] = "catch_up" if state.get("proposing") else "prefill"
            try:
                return orig(self, sequences, last_logits)
            finally:
                state["phase"] = None

        return wrapped

    def timed(name_of):
        def make(orig):
            def wrapped(*args, **kwargs):
                with timers.time(name_of(args)):
                    return orig(*args, **kwargs)

            return wrapped

        return make

    patch(kv_cache.RaggedKVCache, "forward", forward)
    patch(kv_cache.RaggedKVCache, "append", append)
    patch(
        kv_cache.RaggedKVCache,
        "_attention_mask",
        timed(lambda a: f"{who(a[0].model)}.{state['phase'] or 'feed'}.mask"),
    )
    patch(kv_cache.RaggedKVCache, "commit", timed(lambda a: f"{who(a[0].model)}.commit"))
    patch(kv_cache.RaggedKVCache, "maybe_compact", timed(lambda a: f"{who(a[0].model)}.compact"))
    patch(kv_cache, "_logits", timed(lambda a: f"{who(a[0])}.{state['phase'] or 'feed'}.head"))
    for model, name in ((draft_model, "draft"), (target_model, "target")):
        decoder = model.get_decoder()

        def decoder_forward(orig, name=name):
            def wrapped(*args, **kwargs):
                with timers.time(f"{name}.{state['phase'] or 'feed'}.decoder"):
                    return orig(*args, **kwargs)

            return wrapped

        patch(decoder, "forward", decoder_forward)
    patch(ops, "draft_cumprod", timed(lambda a: "draft.draft_cumprod"))
    patch(ops, "select", timed(lambda a: "select.ops_select"))

    def propose(orig):
        def wrapped(*args, **kwargs):
            state["proposing"] = True
            try:
                with timers.time("draft.propose_total"):
                    return orig(*args, **kwargs)
            finally:
                state["proposing"] = False

        return wrapped

    patch(drafters.ModelDrafter, "propose", propose)
    patch(drafters.ModelDrafter, "update", timed(lambda a: "draft.update_total"))
    patch(engine, "build_block", timed(lambda a: "block.build_block"))
    patch(decoding, "verify", timed(lambda a: "target.acceptance_ops"))
    patch(decoding.LiveTarget, "verify", timed(lambda a: "target.verify_total"))
    patch(engine.Engine, "step", timed(lambda a: "step.total"))
    patch(decoding.Request, "advance", timed(lambda a: "step.advance"))
    try:
        yield
    finally:
        for owner, name, original in reversed(patches):
            setattr(owner, name, original)
        for model in (draft_model, target_model):  # instance attributes: drop the shadowing entry
            model.get_decoder().__dict__.pop("forward", None)


def parse_policy(name: str):
    """'SD3', 'T31', ... and, with a suffix 'w<N>', a tree drafter of width N: (factory, width)."""
    base, _, width = name.partition("w")
    if base not in POLICIES or (width and not width.isdigit()):
        raise argparse.ArgumentTypeError(
            f"unknown policy {name!r}: one of {sorted(POLICIES)}, optionally + 'w<width>'"
        )
    return name, POLICIES[base], int(width or 1)


def profile_policy(target, draft, prompts, spec, batch, max_new_tokens, eos) -> dict:
    timers = Timers()
    name, make_policy, tree_width = spec
    policy = make_policy()
    drafter = ModelDrafter(draft, 10, tree_width) if policy.num_draft(batch) else None
    with instrumented(timers, draft, target):
        result = generate(
            target,
            prompts,
            policy,
            drafter,
            max_new_tokens=max_new_tokens,
            max_batch_size=batch,
            eos_token_id=eos,
        )
    s = result.stats
    steps = s["steps"]
    per_step = {
        name: {
            "calls": d["calls"] / steps,
            "tokens_per_call": d["tokens"] / d["calls"] if d["calls"] else 0,
            "ms": 1e3 * d["wall"] / steps,
            "cpu_ms": 1e3 * d["cpu"] / steps,
        }
        for name, d in sorted(timers.data.items())
    }
    return {
        "policy": str(policy) + (f" tree_width={tree_width}" if tree_width > 1 else ""),
        "steps": steps,
        "breakdown": breakdown(per_step),
        "generated_tokens": s["generated_tokens"],
        "wall_seconds": s["wall_seconds"],
        "cpu_seconds": s["cpu_seconds"],
        "accepted_tokens": s["accepted_tokens"],
        "verified_tokens": s["verified_tokens"],
        "prefill_seconds": s["prefill_seconds"],
        "per_step": per_step,
        "outputs": result.tokens,
    }


def isolated_forwards(target, draft, prompts, batch, widths=(1, 2, 4), reps=5) -> dict:
    """ms of one decoder + head forward with q tokens per row on a prefilled batch of ``batch``
    prompts (nothing committed, so every call sees the same cache); interleaved repetitions,
    median kept. Also the head alone (1 token per row)."""
    caches = {}
    for name, model in (("draft", draft), ("target", target)):
        cache = kv_cache.RaggedKVCache(model)
        cache.append([p[:-1] for p in prompts[:batch]])
        caches[name] = cache
    B = min(batch, len(prompts))
    runs = defaultdict(list)
    for _ in range(reps):
        for name, cache in caches.items():
            for q in widths:
                tokens = torch.full((B, q), 100, dtype=torch.long)
                positions = cache.lengths()[:, None] + torch.arange(q)
                causal = torch.ones(q, q, dtype=torch.bool).tril().expand(B, q, q)
                width = cache.width
                w, c = time.perf_counter(), time.process_time()
                cache.forward(tokens, positions, causal, logits_at=torch.ones(B, q, dtype=torch.bool))
                runs[f"{name}.q{q}"].append((time.perf_counter() - w, time.process_time() - c))
                cache._map_layers(
                    lambda t, width=width: t[:, :, :width]
                )  # drop the uncommitted columns again
                cache.positions, cache.valid = cache.positions[:, :width], cache.valid[:, :width]
            model = cache.model
            hidden = torch.zeros(B, model.config.hidden_size, dtype=cache.dtype)
            w, c = time.perf_counter(), time.process_time()
            kv_cache._logits(model, hidden)
            runs[f"{name}.head_q1"].append((time.perf_counter() - w, time.process_time() - c))
    prefix = float(caches["target"].lengths().float().mean())
    return {
        "batch": B,
        "mean_prefix_tokens": prefix,
        **{
            k: {
                "ms": 1e3 * sorted(x[0] for x in v)[len(v) // 2],
                "cpu_ms": 1e3 * sorted(x[1] for x in v)[len(v) // 2],
            }
            for k, v in runs.items()
        },
    }


def breakdown(per_step: dict) -> dict:
    """ms per step (wall and CPU) of the step's pieces; 'rest' is the step's total minus the
    timed pieces (Python bookkeeping, stop checks, statistics, the policy's feedback)."""

    def get(name, key):
        return per_step.get(name, {}).get(key, 0.0)

    out = {}
    for key in ("ms", "cpu_ms"):
        draft_fwd = get("draft.catch_up.forward", key) + get("draft.feed.forward", key)
        pieces = {
            "draft forwards": draft_fwd,
            "  of which the draft's output head": get("draft.catch_up.head", key)
            + get("draft.feed.head", key),
            "draft other (scores, top-k, masks, Python)": get("draft.propose_total", key) - draft_fwd,
            "selection (ops.select)": get("select.ops_select", key),
            "verification block": get("block.build_block", key),
            "target forward": get("target.feed.forward", key),
            "  of which the target's output head": get("target.feed.head", key),
            "acceptance ops": get("target.acceptance_ops", key),
            "rollback (commit, compact, drafter update)": get("target.verify_total", key)
            - get("target.feed.forward", key)
            - get("target.acceptance_ops", key)
            + get("draft.update_total", key),
        }
        timed = (
            get("draft.propose_total", key)
            + get("select.ops_select", key)
            + get("block.build_block", key)
            + get("target.verify_total", key)
            + get("draft.update_total", key)
        )
        pieces["rest (bookkeeping, stop checks, stats)"] = get("step.total", key) - timed
        pieces["step total"] = get("step.total", key)
        for name, value in pieces.items():
            out.setdefault(name, {})[key] = value
    calls = get("draft.catch_up.forward", "calls") + get("draft.feed.forward", "calls")
    out["draft forwards per step"] = calls
    out["draft ms per forward"] = out["draft forwards"]["ms"] / calls if calls else 0.0
    out["draft cpu ms per forward"] = out["draft forwards"]["cpu_ms"] / calls if calls else 0.0
    out["target query tokens per forward"] = per_step.get("target.feed.forward", {}).get(
        "tokens_per_call", 0.0
    )
    return out


def chart(rows, isolated, meta, path: Path) -> None:
    """Stacked CPU ms per step of each policy's pieces, and per generated token."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pieces = [
        ("draft forwards", "tab:orange"),
        ("draft other (scores, top-k, masks, Python)", "tab:red"),
        ("target forward", "tab:blue"),
        ("acceptance ops", "tab:green"),
        ("rollback (commit, compact, drafter update)", "tab:olive"),
        ("rest (bookkeeping, stop checks, stats)", "tab:gray"),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    names = [r["policy"].replace(" tree_width=", "\ntree ") for r in rows]
    for ax, per_token in zip(axes, (False, True)):
        bottom = [0.0] * len(rows)
        for piece, color in pieces:
            values = [
                r["breakdown"][piece]["cpu_ms"] / (r["generated_tokens"] / r["steps"] if per_token else 1)
                for r in rows
            ]
            ax.bar(names, values, bottom=bottom, color=color, label=piece)
            bottom = [b + v for b, v in zip(bottom, values)]
        ax.set_ylabel("CPU ms per generated token" if per_token else "CPU ms per step")
        ax.tick_params(axis="x", labelsize=7, rotation=45)
        ax.grid(axis="y", alpha=0.3)
    for model, color in (("draft", "tab:orange"), ("target", "tab:blue")):
        label = f"one isolated {model} forward (1 token/row)"
        axes[0].axhline(isolated[f"{model}.q1"]["cpu_ms"], ls=":", color=color, lw=1, label=label)
    axes[0].legend(fontsize=7)
    fig.suptitle(
        f"Where a step's time goes: Qwen2.5-Coder 1.5B + 0.5B draft, {meta['dtype']}, batch {meta['batch']}, "
        f"{meta['prompts']} {meta['source']} prompts x {meta['max_new_tokens']} tokens, "
        f"{meta['torch_threads']} thread, {meta['date'][:10]}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_report(rows, isolated) -> None:
    for row in rows:
        print(
            f"\n== {row['policy']}: {row['steps']} steps, {row['generated_tokens']} tokens, "
            f"wall {row['wall_seconds']:.1f} s, cpu {row['cpu_seconds']:.1f} s"
        )
        print(f"   {'piece':34s} {'calls/step':>10s} {'tok/call':>8s} {'ms/step':>9s} {'cpu ms/step':>11s}")
        for name, d in row["per_step"].items():
            print(
                f"   {name:34s} {d['calls']:10.2f} {d['tokens_per_call']:8.1f} {d['ms']:9.1f} {d['cpu_ms']:11.1f}"
            )
        print("   breakdown (ms per step, wall / cpu):")
        for name, v in row["breakdown"].items():
            text = f"{v['ms']:8.1f} / {v['cpu_ms']:8.1f}" if isinstance(v, dict) else f"{v:8.2f}"
            print(f"     {name:46s} {text}")
    print(
        f"\nisolated forwards (batch {isolated['batch']}, mean prefix {isolated['mean_prefix_tokens']:.0f} tokens):"
    )
    for k, v in isolated.items():
        if isinstance(v, dict):
            print(f"   {k:14s} {v['ms']:8.1f} ms   cpu {v['cpu_ms']:8.1f} ms")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
    ap.add_argument("--source", default="code")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument(
        "--policies",
        nargs="+",
        type=parse_policy,
        default=[parse_policy(p) for p in ("AR", "SD3", "T31")],
        help=f"of {sorted(POLICIES)}; suffix w<N>: a tree drafter of width N (e.g. T33w2)",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "qwen_step_profile")
    ap.add_argument(
        "--rebreak", type=Path, metavar="JSON", help="only recompute the breakdowns of an earlier run"
    )
    args = ap.parse_args(argv)
    if args.rebreak:
        import json

        saved = json.loads(args.rebreak.read_text())
        for row in saved["rows"]:
            row["breakdown"] = breakdown(row["per_step"])
        write_json(args.rebreak, saved)
        chart(saved["rows"], saved["isolated"], saved["meta"], args.rebreak.with_suffix(".png"))
        print_report(saved["rows"], saved["isolated"])
        return 0
    torch.set_num_threads(args.threads)
    from qwen_pair import chat_prompts, load_pair

    from tetris_ext.models import QWEN_STOP_TOKEN_IDS

    target, draft, tokenizer = load_pair(args.dtype)
    prompts = [p["tokens"] for p in chat_prompts(tokenizer, [args.source], limit=args.prompts)]
    eos = list(QWEN_STOP_TOKEN_IDS)
    generate(target, prompts[:1], Autoregressive(), max_new_tokens=2)  # warm-up
    with torch.inference_mode():
        isolated = isolated_forwards(target, draft, prompts, args.batch)
    rows = [
        profile_policy(target, draft, prompts, spec, args.batch, args.max_new_tokens, eos)
        for spec in args.policies
    ]
    reference = rows[0]["outputs"]
    for row in rows:
        row["same_output_as_first"] = sum(a == b for a, b in zip(row.pop("outputs"), reference))
    meta = run_metadata("cpu") | {
        "dtype": args.dtype,
        "source": args.source,
        "prompts": len(prompts),
        "batch": args.batch,
        "max_new_tokens": args.max_new_tokens,
    }
    print_report(rows, isolated)
    write_json(args.out.with_suffix(".json"), {"meta": meta, "isolated": isolated, "rows": rows})
    chart(rows, isolated, meta, args.out.with_suffix(".png"))
    print(f"\nwrote {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
