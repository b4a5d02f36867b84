"""Microbenchmarks: every tetris op against the PyTorch code a user would otherwise write.

    python bench/ops.py                 # default grid (a few minutes on a 2-core CPU)
    python bench/ops.py --full          # the whole grid (B 1..1024, N 4..64, V 32000 and 262144, all dtypes)
    python bench/ops.py --device cuda   # on a GPU (CUDA events; make gpu-check runs it there)

For each case, our op and its baseline (bench/baselines.py) first run once on the same inputs
and must agree; then both are timed side by side (interleaved repetitions; times are medians,
a speed-up is the median of the per-repetition ratios baseline / ours, which cancels bursts of
load from other processes; the ratio of the minimum times is printed beside it). Prints a
table of speed-up ratios and the speed-goal rows (GOALS below) with PASS/FAIL,
and writes bench/results/ops_<device>.json and .png (override with --out).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import baselines  # noqa: E402
import tetris_ext  # noqa: E402,F401  (registers torch.ops.tetris)
from common import (  # noqa: E402
    RESULTS_DIR,
    format_table,
    median,
    paired_ratio,
    run_metadata,
    save_figure,
    time_side_by_side,
    write_json,
)

T = torch.ops.tetris

# The ops' speed goals on the CPU: the ratio of the baseline's time to ours, at the shapes of a
# batch decoding step (select: 256 or 1024 requests of 16 candidates; draft_cumprod: a
# Llama-sized vocabulary). Every run prints them with PASS / FAIL; `--goals` runs only these.
GOALS = {
    ("select", (("B", 256), ("N", 16), ("budget", 2048))): 5.0,
    ("select", (("B", 1024), ("N", 16), ("budget", 8192))): 10.0,
    ("draft_cumprod", (("B", 64), ("N", 8), ("V", 32000), ("dtype", "float32"), ("tree", False))): 4.0,
}


@dataclass
class Case:
    op: str
    shape: dict
    ours: Callable[[], object]
    baseline: Callable[[], object]
    check: Callable[[object, object], None]  # raises AssertionError when outputs disagree
    baseline_name: str
    # extra contenders timed in the same loop (e.g. a plain read of the same tensor)
    extra: dict[str, Callable[[], object]] = field(default_factory=dict)
    bytes_read: int = 0

    @property
    def goal(self) -> float | None:
        return GOALS.get((self.op, tuple(self.shape.items())))


def _equal(*pairs):
    for a, b in pairs:
        assert torch.equal(a.cpu(), b.cpu()), f"mismatch:\n{a}\n{b}"


def random_parents(B: int, N: int, gen: torch.Generator, device) -> torch.Tensor:
    """A random tree in topological order: parent of n uniform in [-1, n-1]."""
    n = torch.arange(N)
    parents = (torch.rand(B, N, generator=gen) * (n + 1)).long() - 1
    return parents.to(device)


def select_cases(B: int, N: int, device, gen) -> list[Case]:
    budget = B * N // 2
    token_logprobs = torch.rand(B, N, generator=gen).clamp_min(1e-3).log().to(device)
    cum = token_logprobs.cumsum(-1)

    def check(ours, lengths):
        _equal((ours[1].long(), lengths))

    # vLLM's topk batch budget (a third contender): same lengths, checked here before timing.
    _equal(
        (baselines.topk_budget(token_logprobs, budget), baselines.select_composite(token_logprobs, budget))
    )
    return [
        Case(
            "select",
            {"B": B, "N": N, "budget": budget},
            ours=lambda: T.select(cum, budget),
            baseline=lambda: baselines.select_composite(token_logprobs, budget),
            check=check,
            baseline_name="cumsum+topk+scatter_reduce(amax)",
            extra={"topk_budget": lambda: baselines.topk_budget(token_logprobs, budget)},
        )
    ]


# One long request, at two lengths in the grid: the time should grow ~linearly (the per-request
# rank once cost O(N^2): 200,000 candidates took over a minute).


def long_select_cases(N: int, device, gen) -> list[Case]:
    """select with a per-request cap over N candidates that all hang at the root (the kernel
    used to rank each against the whole request: O(N^2))."""
    scores = torch.rand(1, N, generator=gen).log().to(device)
    roots = torch.full((1, N), -1, device=device)
    cap, budget = 500, 1000
    caps = torch.tensor([cap], device=device)
    return [
        Case(
            "select",
            {"B": 1, "N": N, "budget": budget, "cap": cap},
            ours=lambda: T.select(scores, budget, roots, caps),
            baseline=lambda: baselines.select_capped_roots(scores, budget, cap),
            check=lambda o, r: _equal((o[0], r)),
            baseline_name="topk per request, then over the batch",
        )
    ]


def long_verify_cases(N: int, device, gen) -> list[Case]:
    """verify_greedy over a fully accepted chain of N + 1 slots (one walk step per slot)."""
    slot_tokens = torch.randint(0, 3, (1, N + 1), generator=gen).to(device)
    target = torch.cat([slot_tokens[:, 1:], slot_tokens[:, :1]], 1)  # every draft token agrees
    chain = torch.arange(-1, N, device=device).unsqueeze(0)
    return [
        Case(
            "verify_greedy",
            {"B": 1, "M": N + 1, "tree": False, "accepted": "all"},
            ours=lambda: T.verify_greedy(slot_tokens, chain, target),
            baseline=lambda: baselines.verify_greedy_chain(slot_tokens, target),
            check=lambda o, r: _equal(*zip(o, r)),
            baseline_name="torch cumprod of matches",
        )
    ]


def draft_cumprod_cases(B, N, V, dtype, tree, device, gen) -> list[Case]:
    if torch.device(device).type == "cuda":  # up to a GiB of logits: drawn on the GPU, in a blink
        seed = int(torch.randint(0, 2**62, (1,), generator=gen))
        logits = torch.randn(B, N, V, device=device, generator=torch.Generator(device).manual_seed(seed)).to(
            dtype
        )
    else:
        logits = torch.randn(B, N, V, generator=gen).to(device=device, dtype=dtype)
    tokens = torch.randint(0, V, (B, N), generator=gen).to(device)
    parents = random_parents(B, N, gen, device) if tree else None
    if tree:
        # log_softmax + gather, then the path sums level by level (a user's tree version).
        def base():
            tok, _ = baselines.draft_logprobs(logits, tokens)
            cum = tok.clone()
            for n in range(1, N):  # parents come before children: one pass suffices
                p = parents[:, n]
                cum[:, n] += torch.where(p >= 0, cum.gather(1, p.clamp_min(0).unsqueeze(1)).squeeze(1), 0.0)
            return tok, cum
    else:

        def base():
            return baselines.draft_logprobs(logits, tokens)

    def check(ours, ref):
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a.cpu(), b.cpu(), rtol=1e-4, atol=1e-3)

    return [
        Case(
            "draft_cumprod",
            {"B": B, "N": N, "V": V, "dtype": str(dtype).removeprefix("torch."), "tree": tree},
            ours=lambda: T.draft_cumprod(logits, tokens, parents),
            baseline=base,
            check=check,
            baseline_name="log_softmax+gather+cumsum",
            extra={"read": lambda: logits.amax(-1)},
            bytes_read=logits.numel() * logits.element_size(),
        )
    ]


def tree_mask_cases(B, N, tree, device, gen) -> list[Case]:
    selected = (torch.rand(B, N, generator=gen) < 0.8).to(device)
    parents = random_parents(B, N, gen, device) if tree else None
    prefix_lens = torch.randint(1, 2048, (B,), generator=gen).to(device)
    shape = {"B": B, "N": N, "tree": tree}
    args = (selected, parents, prefix_lens)
    # The dense mask and the packed one, each against its baseline on the same inputs.
    return [
        Case(
            name,
            shape,
            ours=lambda name=name: getattr(T, name)(*args),
            baseline=lambda name=name: getattr(baselines, name)(*args),
            check=lambda o, r: _equal(*zip(o, r)),
            baseline_name=baseline_name,
        )
        for name, baseline_name in [
            ("tree_mask", "vectorised torch"),
            ("tree_mask_packed", "vectorised torch + packbits"),
        ]
    ]


def random_slots(B, M, tree, gen):
    """Slot parents (chain or random tree) and tokens over a 3-token vocabulary."""
    if tree:
        s = torch.arange(M)
        slot_parent = (torch.rand(B, M, generator=gen) * s).long()
    else:
        slot_parent = torch.arange(-1, M - 1).expand(B, M).clone()
    slot_parent[:, 0] = -1
    slot_tokens = torch.randint(0, 3, (B, M), generator=gen)
    return slot_parent, slot_tokens


def tree_depth(slot_parent: torch.Tensor) -> int:
    depth = torch.zeros_like(slot_parent)
    for s in range(1, slot_parent.shape[1]):
        depth[:, s] = depth.gather(1, slot_parent[:, s : s + 1].clamp_min(0)).squeeze(1) + 1
    return int(depth.max())


def verify_greedy_cases(B, M, tree, device, gen) -> list[Case]:
    slot_parent, slot_tokens = random_slots(B, M, tree, gen)
    target = torch.randint(0, 3, (B, M), generator=gen)
    if not tree:  # chains: the target agrees with the next draft token 80% of the time
        agree = torch.rand(B, M - 1, generator=gen) < 0.8
        target[:, :-1] = torch.where(agree, slot_tokens[:, 1:], target[:, :-1])
    max_depth = tree_depth(slot_parent)
    slot_parent, slot_tokens, target = (t.to(device) for t in (slot_parent, slot_tokens, target))
    if tree:
        base = lambda: baselines.verify_greedy_tree(slot_tokens, slot_parent, target, max_depth)  # noqa: E731
        name = "torch loop over levels"
    else:
        base = lambda: baselines.verify_greedy_chain(slot_tokens, target)  # noqa: E731
        name = "torch cumprod of matches"
    return [
        Case(
            "verify_greedy",
            {"B": B, "M": M, "tree": tree},
            ours=lambda: T.verify_greedy(slot_tokens, slot_parent, target),
            baseline=base,
            check=lambda o, r: _equal(*zip(o, r)),
            baseline_name=name,
        )
    ]


def dyadic_distributions(B, M, V, favoured, gen, headroom: int = 1) -> torch.Tensor:
    """[B, M, V] probabilities that are multiples of 2^-k summing to exactly 1 per row, with
    the remainder (about half the mass) on the token `favoured[b, i]`. Every sum the
    verification walk forms is then exact in float32, so our op and the baseline must agree
    bit for bit, and the favoured (drafted) tokens are likely to be accepted."""
    weights = torch.randint(0, 8, (B, M, V), generator=gen)
    scale = 1 << (8 * headroom * V - 1).bit_length()  # a power of two above twice the random mass
    rest = scale - weights.sum(-1)
    weights.scatter_add_(2, favoured.unsqueeze(-1), rest.unsqueeze(-1))
    return weights.double().div(scale).float()


def verify_sampling_cases(B, M, V, tree, device, gen) -> list[Case]:
    """Chains come with draft probabilities, trees without (deterministic children)."""
    slot_parent, _ = random_slots(B, M, tree, gen)
    slot_tokens = torch.randint(0, V, (B, M), generator=gen)
    # the favoured token after slot i: the token of its first child (if any)
    favoured = torch.randint(0, V, (B, M), generator=gen)
    for s in reversed(range(1, M)):
        favoured[torch.arange(B), slot_parent[:, s]] = slot_tokens[:, s]
    target_probs = dyadic_distributions(B, M, V, favoured, gen)
    # a draft more confident than the target: about 3 in 4 drafted tokens are accepted
    draft_probs = None if tree else dyadic_distributions(B, M, V, favoured, gen, headroom=2)
    uniforms = torch.rand(B, M, generator=gen)
    args = [slot_tokens, slot_parent, target_probs, draft_probs, uniforms]
    args = [a.to(device) if a is not None else None for a in args]
    return [
        Case(
            "verify_sampling",
            {"B": B, "M": M, "V": V, "tree": tree},
            ours=lambda: T.verify_sampling(*args),
            baseline=lambda: baselines.verify_sampling(*args),
            check=lambda o, r: _equal(*zip(o, r)),
            baseline_name="torch loop over slots",
        )
    ]


def grid(size: str):
    """(op, builder, kwargs) for every case of the grid `size` (tiny, default, full)."""
    gb = 1 << 30
    if size == "goals":
        return [
            ("select", select_cases, dict(B=256, N=16)),
            ("select", select_cases, dict(B=1024, N=16)),
            ("draft_cumprod", draft_cumprod_cases, dict(B=64, N=8, V=32000, dtype=torch.float32, tree=False)),
        ]
    if size == "tiny":
        Bs, Ns, Vs, dtypes, max_bytes = [1, 8], [4], [32000], [torch.float32], gb // 8
    elif size == "default":
        Bs, Ns, Vs, dtypes, max_bytes = (
            [1, 16, 64, 256, 1024],
            [4, 16, 64],
            [32000, 262144],
            [torch.float32],
            gb,
        )
    else:
        Bs, Ns, Vs = [1, 4, 16, 64, 256, 1024], [4, 8, 16, 32, 64], [32000, 262144]
        dtypes, max_bytes = [torch.float32, torch.bfloat16, torch.float16], 4 * gb
    out = []
    for B in Bs:
        for N in Ns:
            out.append(("select", select_cases, dict(B=B, N=N)))
    if size != "tiny":  # the goal shapes, even when the grid skips them
        for B, N in [(256, 16), (1024, 16)]:
            if (B, N) not in [(b, n) for b in Bs for n in Ns]:
                out.append(("select", select_cases, dict(B=B, N=N)))
    # draft_cumprod: N 4..16 (drafts are short), bounded by the logits' size.
    dc_Ns = [n for n in ([4, 8, 16] if size != "tiny" else [4])]
    dc_shapes = {
        (B, N, V, dt, tree)
        for B in Bs
        for N in dc_Ns
        for V in Vs
        for dt in dtypes
        for tree in ([False, True] if size == "full" else [False])
    }
    if size != "tiny":
        dc_shapes.add((64, 8, 32000, torch.float32, False))
    for B, N, V, dt, tree in sorted(dc_shapes, key=lambda s: (s[2], s[0], s[1], str(s[3]), s[4])):
        if B * N * V * torch.tensor([], dtype=dt).element_size() <= max_bytes:
            out.append(("draft_cumprod", draft_cumprod_cases, dict(B=B, N=N, V=V, dtype=dt, tree=tree)))
    for tree in [False, True]:
        for B in Bs:
            for N in Ns:
                out.append(("tree_mask", tree_mask_cases, dict(B=B, N=N, tree=tree)))
                out.append(("verify_greedy", verify_greedy_cases, dict(B=B, M=N + 1, tree=tree)))
    for N in [] if size == "tiny" else [20_000, 200_000]:  # long single requests (see above)
        out.append(("select", long_select_cases, dict(N=N)))
        out.append(("verify_greedy", long_verify_cases, dict(N=N)))
    vs_Bs = [b for b in Bs if b <= (8 if size == "tiny" else 64 if size == "default" else 256)]
    vs_Ms = [5] if size == "tiny" else [5, 9] if size == "default" else [5, 9, 17]
    for tree in [False, True]:
        for V in Vs:
            for B in vs_Bs:
                for M in vs_Ms:
                    if B * M * V * 4 * (1 if tree else 2) <= max_bytes // 2:
                        out.append(("verify_sampling", verify_sampling_cases, dict(B=B, M=M, V=V, tree=tree)))
    return out


def run_case(case: Case, device: str, seconds: float) -> dict:
    row = {
        "op": case.op,
        **{k: v for k, v in case.shape.items()},
        "shape": case.shape,
        "baseline_name": case.baseline_name,
    }
    try:
        ours = case.ours()
    except (NotImplementedError, RuntimeError) as e:
        row["status"] = "unavailable: " + str(e).splitlines()[0][:120]
        return row
    try:
        case.check(ours, case.baseline())
    except AssertionError as e:  # never time different work; report it loudly instead
        row["status"] = "MISMATCH: " + str(e).splitlines()[0][:200]
        return row
    samples = time_side_by_side(
        {"ours": case.ours, "baseline": case.baseline, **case.extra}, device=device, seconds_per_case=seconds
    )
    times = {name: median(s) for name, s in samples.items()}
    row.update(
        status="ok",
        ours_s=times["ours"],
        baseline_s=times["baseline"],
        ratio=paired_ratio(samples["baseline"], samples["ours"]),
        ratio_of_mins=min(samples["baseline"]) / min(samples["ours"]),
        reps=len(samples["ours"]),
    )
    for name in case.extra:  # each extra contender's time, and its time / ours (paired)
        row[f"{name}_s"], row[f"{name}_ratio"] = times[name], paired_ratio(samples[name], samples["ours"])
    if case.bytes_read:
        row["ours_GBps"] = case.bytes_read / times["ours"] / 1e9
        row["read_GBps"] = case.bytes_read / times["read"] / 1e9
        row["bw_fraction"] = paired_ratio(samples["read"], samples["ours"])
    if case.goal is not None:
        row["goal"] = case.goal
        row["goal_pass"] = row["ratio"] >= case.goal
    return row


def shape_label(row: dict) -> str:
    parts = []
    for k, v in row["shape"].items():
        if k == "tree":
            parts.append("tree" if v else "chain")
        elif k == "dtype":
            parts.append({"float32": "f32", "bfloat16": "bf16", "float16": "f16"}[v])
        elif k == "V":
            parts.append(f"V{v // 1000}k")
        else:
            parts.append(f"{k}{v}")
    return " ".join(parts)


def chart(rows: list[dict], meta: dict, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure_title = (
        f"tetris ops vs PyTorch baselines — {meta['device']}, {meta.get('gpu', meta['cpu'])}, "
        f"torch {meta['torch']}, {meta['date'][:10]}"
    )

    ok = [r for r in rows if r.get("status") == "ok"]
    panels = [(op, "ratio", f"{op}: baseline time / ours") for op in dict.fromkeys(r["op"] for r in ok)]
    if any("bw_fraction" in r for r in ok):
        panels.append(("draft_cumprod", "bw_fraction", "draft_cumprod: time of a plain read (amax) / ours"))
    if not panels:
        return
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(
            max(8, 0.28 * max(sum(r["op"] == op for r in ok) for op, _, _ in panels)),
            3.2 * len(panels),
        ),
        squeeze=False,
    )
    for ax, (op, key, title) in zip(axes[:, 0], panels):
        sel = [r for r in ok if r["op"] == op and key in r]
        xs = range(len(sel))
        colors = ["tab:green" if r[key] >= 1 else "tab:red" for r in sel]
        ax.bar(xs, [r[key] for r in sel], color=colors)
        ax.axhline(1.0, color="black", lw=0.8)
        for x, r in zip(xs, sel):
            if key == "ratio" and r.get("goal"):
                ax.plot([x - 0.4, x + 0.4], [r["goal"]] * 2, color="tab:blue", lw=2)
                ax.annotate(f"goal {r['goal']:g}x", (x, r["goal"]), fontsize=7, ha="center", va="bottom")
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%gx"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(title, fontsize=10)
        ax.set_xticks(list(xs), [shape_label(r) for r in sel], rotation=70, fontsize=6, ha="right")
    save_figure(fig, path, figure_title, top=0.98)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="the whole grid (long)")
    size.add_argument("--tiny", action="store_true", help="a few small cases (smoke test)")
    size.add_argument("--goals", action="store_true", help="only the speed-goal shapes (GOALS)")
    ap.add_argument("--ops", nargs="*", help="only these ops (e.g. select draft_cumprod)")
    ap.add_argument("--seconds-per-case", type=float, default=1.5)
    ap.add_argument(
        "--threads",
        type=int,
        help="torch.set_num_threads; default 1 on the CPU (see bench/README.md), torch's on CUDA",
    )
    ap.add_argument("--out", type=Path, help="result path prefix (default bench/results/ops_<device>)")
    ap.add_argument("--no-chart", action="store_true")
    ap.add_argument("--replot", type=Path, metavar="JSON", help="only redraw the chart of an earlier run")
    args = ap.parse_args(argv)
    if args.replot:
        import json

        saved = json.loads(args.replot.read_text())
        chart(saved["rows"], saved["meta"], args.replot.with_suffix(".png"))
        print(f"wrote {args.replot.with_suffix('.png')}")
        return 0
    if args.threads or args.device == "cpu":
        torch.set_num_threads(args.threads or 1)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no GPU is available")

    size_name = "full" if args.full else "tiny" if args.tiny else "goals" if args.goals else "default"
    meta = run_metadata(args.device) | {"grid": size_name}
    gen = torch.Generator().manual_seed(0)
    rows = []
    todo = [t for t in grid(size_name) if not args.ops or t[0] in args.ops]
    try:
        from tqdm import tqdm

        todo_iter = tqdm(todo, desc="ops", unit="case", file=sys.stderr)
    except ImportError:
        todo_iter = todo
    for _, builder, kwargs in todo_iter:
        for case in builder(**kwargs, device=args.device, gen=gen):
            rows.append(run_case(case, args.device, args.seconds_per_case))

    ok = [r for r in rows if r["status"] == "ok"]
    for op in dict.fromkeys(r["op"] for r in rows):
        sel = [r for r in rows if r["op"] == op]
        print(f"\n== {op}  (baseline: {sel[0]['baseline_name']})")
        for r in sel:
            if r["status"] != "ok":
                print(f"   {shape_label(r)}: {r['status']}")
        if not any(r["status"] == "ok" for r in sel):
            continue
        cols = [
            ("label", "shape"),
            ("ours_us", "ours us"),
            ("baseline_us", "baseline us"),
            ("ratio", "speed-up"),
            ("ratio_of_mins", "(of mins)"),
        ]
        if op == "draft_cumprod":
            cols += [("ours_GBps", "ours GB/s"), ("read_GBps", "amax GB/s"), ("bw_fraction", "read/ours")]
        if op == "select":
            cols += [("topk_budget_us", "topk-budget us"), ("topk_budget_ratio", "topk-budget/ours")]
        table = [
            r
            | {
                "label": shape_label(r),
                "ours_us": r.get("ours_s", 0) * 1e6,
                "baseline_us": r.get("baseline_s", 0) * 1e6,
                "topk_budget_us": r.get("topk_budget_s", 0) * 1e6,
            }
            for r in sel
            if r["status"] == "ok"
        ]
        print(format_table(table, cols))

    goal_rows = [r for r in ok if "goal" in r]
    print("\n== speed goals (baseline time / ours, measured side by side in this run)")
    for r in goal_rows:
        verdict = "PASS" if r["goal_pass"] else "FAIL"
        print(
            f"   {r['op']:14s} {shape_label(r):32s} ratio {r['ratio']:7.2f}x"
            f"  goal >= {r['goal']:g}x  {verdict}"
            f"   (medians: ours {r['ours_s'] * 1e6:.1f} us, baseline {r['baseline_s'] * 1e6:.1f} us;"
            f" ratio of minimums {r['ratio_of_mins']:.2f}x; {r['reps']} paired repetitions)"
        )
    if not goal_rows:
        print("   (no goal shape in this grid, or the op is unavailable)")

    prefix = args.out or RESULTS_DIR / f"ops_{args.device}"
    payload = {
        "meta": meta,
        "goals": [
            {
                "op": r["op"],
                "shape": r["shape"],
                "ratio": r["ratio"],
                "goal": r["goal"],
                "pass": r["goal_pass"],
            }
            for r in goal_rows
        ],
        "rows": rows,
    }
    json_path = write_json(prefix.with_suffix(".json"), payload)
    print(f"\nwrote {json_path}")
    if not args.no_chart and ok:
        chart(rows, meta, prefix.with_suffix(".png"))
        print(f"wrote {prefix.with_suffix('.png')}")
    mismatches = [r for r in rows if r["status"].startswith("MISMATCH")]
    for r in mismatches:
        print(f"ERROR {r['op']} {shape_label(r)}: our op and the baseline disagree ({r['status']})")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
