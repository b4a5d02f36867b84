"""The drop-in for vLLM's adaptive verification as a whole, against vLLM's own budget step.

    .venv-vllm/bin/python bench/dropin.py               # CPU, one thread (results: bench/results/dropin_cpu.*)
    .venv-vllm/bin/python bench/dropin.py --device cuda  # on a GPU

Run it where vLLM and tetris_ext (built for vLLM's torch) are both importable. Contenders, each
called with vLLM's signature on the same inputs (confidences [B, S], a permuted idx_mapping,
scheduled draft counts, a budget of half of them) and each first resetting `capacities` in
place, as vLLM's step does before the call:
  - vllm eager:    vllm...adaptive_verification._assign_draft_token_budget
  - vllm compiled: its torch.compile(dynamic=True) twin _assign_draft_token_budget_compiled,
                   the function vLLM calls
  - tetris dropin: tetris_ext.vllm.dropin.assign_draft_token_budget (what register() installs)
Before timing, the drop-in's counts must equal vLLM eager's (the inputs have no ties). Times are
medians of interleaved repetitions; ratios are medians of per-repetition ratios (bench/common.py).
Goal: the drop-in at least 3x faster than vLLM's eager function on the CPU at
B = 256, 8 steps; printed PASS/FAIL.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    RESULTS_DIR,
    format_table,
    median,
    paired_ratio,
    run_metadata,
    time_side_by_side,
    write_json,
)

BATCHES = (8, 64, 256)
STEPS = 8
GOAL = (256, 3.0)  # (B, least speed-up of the drop-in over vLLM's eager function)


def contenders(B: int, S: int, device: str, seed: int = 0):
    # vLLM is imported here, not at the top: `--help` works without it.
    from vllm.v1.worker.gpu.spec_decode import adaptive_verification as av

    from tetris_ext.vllm import dropin

    g = torch.Generator().manual_seed(seed)
    confidences = torch.rand(B, S, generator=g).to(device)
    idx_mapping = torch.randperm(B, generator=g).int().to(device)
    scheduled = torch.full((B,), S, dtype=torch.int32, device=device)
    capacities = scheduled.clone()
    budget = B * S // 2

    def call(step):
        def run():
            capacities.copy_(scheduled)
            step(confidences, idx_mapping, capacities, budget, S)
            return capacities

        return run

    named = {
        "vllm eager": call(av._assign_draft_token_budget),
        "vllm compiled": call(av._assign_draft_token_budget_compiled),
        "tetris dropin": call(dropin.assign_draft_token_budget),
    }
    expected = named["vllm eager"]().clone()
    for name, run in named.items():
        assert torch.equal(run(), expected), f"{name} admits other drafts than vLLM's eager function"
    return named


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads on the CPU")
    ap.add_argument("--seconds", type=float, default=3.0, help="timing budget per batch size")
    ap.add_argument(
        "--out", type=Path, default=None, help="result prefix (default bench/results/dropin_<device>)"
    )
    args = ap.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    rows = []
    for B in BATCHES:
        samples = time_side_by_side(
            contenders(B, STEPS, args.device),
            args.device,
            min_rep_seconds=5e-3,
            max_reps=400,
            seconds_per_case=args.seconds,
        )
        row = {"B": B, "steps": STEPS, "budget": B * STEPS // 2}
        row.update({f"{name} us": median(s) * 1e6 for name, s in samples.items()})
        row["dropin vs eager"] = paired_ratio(samples["vllm eager"], samples["tetris dropin"])
        row["dropin vs compiled"] = paired_ratio(samples["vllm compiled"], samples["tetris dropin"])
        row["compiled vs eager"] = paired_ratio(samples["vllm eager"], samples["vllm compiled"])
        rows.append(row)
    goal_row = next(r for r in rows if r["B"] == GOAL[0])
    passed = args.device != "cpu" or goal_row["dropin vs eager"] >= GOAL[1]
    columns = [
        ("B", "B"),
        ("budget", "budget"),
        ("vllm eager us", "vllm eager us"),
        ("vllm compiled us", "vllm compiled us"),
        ("tetris dropin us", "dropin us"),
        ("dropin vs eager", "dropin vs eager"),
        ("dropin vs compiled", "dropin vs compiled"),
        ("compiled vs eager", "compiled vs eager"),
    ]
    from tetris_ext.vllm import dropin

    meta = run_metadata(args.device)
    meta.update(
        vllm=dropin.vllm_version(),
        pythonpath=os.environ.get("PYTHONPATH"),
        wall_s=time.perf_counter() - wall0,
        cpu_s=time.process_time() - cpu0,
    )
    goal_line = (
        f"goal: tetris dropin >= {GOAL[1]}x vLLM's eager function at B={GOAL[0]}, {STEPS} steps, on the CPU: "
        f"{goal_row['dropin vs eager']:.2f}x  {'PASS' if passed else 'FAIL'}"
    )
    text = "\n".join(
        [
            f"== vLLM adaptive verification budget step ({args.device}, {meta['torch_threads']} thread(s), "
            f"vLLM {meta['vllm']}, torch {meta['torch']})",
            format_table(rows, columns),
            "",
            goal_line,
            f"command: {'PYTHONPATH=' + meta['pythonpath'] + ' ' if meta['pythonpath'] else ''}{meta['command']}   "
            f"wall {meta['wall_s']:.1f} s, CPU {meta['cpu_s']:.1f} s, "
            f"load average {meta.get('load_average_1m', float('nan')):.1f}",
        ]
    )
    print(text)
    prefix = args.out or RESULTS_DIR / f"dropin_{args.device}"
    write_json(
        prefix.with_suffix(".json"),
        {"meta": meta, "rows": rows, "goal": {"B": GOAL[0], "min_speedup": GOAL[1], "passed": passed}},
    )
    prefix.with_suffix(".txt").write_text(text + "\n")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
