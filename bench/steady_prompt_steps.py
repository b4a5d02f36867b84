"""Why CostAwareTetris trails a fixed floor at batch 64 in a chunked-prefill engine under steady
arrivals: a diagnosis on the TUNING traces only (nothing held out is read).

    python bench/steady_prompt_steps.py     # -> results/steady_prompt_steps.txt

The pooled tuning traces (Gemma 3 270M), the steady protocol of bench/cost_aware.py --steady, the
70B roofline with chunked prefill (bench/cost_aware.py --chunked-prefill), batch 64, request
draws 1 and 2 (where the tuning cells trailed). For each policy, steps split by whether a
joining prompt shares the forward: steps, verified / accepted / generated tokens and decoding ms
per step (the forward less what the prompts add to the roots alone, what the steady ratios
compare), and accepted drafts the protocol's unannounced end of a request throws away
(accepted + one bonus a request - generated). For the cost-aware policy (known cost), its
floor by the step's prompt tokens and the drafts it verifies beyond depth 6 (ThresholdSD's
max_draft); and, over the whole run, each depth's mean path estimate against the realised
acceptance of the candidates it verified.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cost_aware import (  # noqa: E402
    ESTIMATOR,
    STEADY_TRUNCATE,
    STEADY_WAVES,
    TUNING,
    drafter_for,
    policies,
    pool,
    roofline,
)
from estimates import SOURCES  # noqa: E402

from common import RESULTS_DIR  # noqa: E402
from tetris_ext.sim import Trace, replay  # noqa: E402

BATCH, DRAWS = 64, (1, 2)
COST_AWARE = f"CostAwareTetris (known cost) + {ESTIMATOR}"
POLICIES = (COST_AWARE, f"CostAwareTetris (online cost) + {ESTIMATOR}", f"ThresholdSD(0.5, 6) + {ESTIMATOR}")
PROMPT_BINS = ((0, 1), (1, 200), (200, 400), (400, 800), (800, 1 << 30))


def run(trace, policy, estimator, gpu, draw, choices=None):
    return replay(
        trace,
        policy,
        BATCH,
        gpu,
        num_requests=max(trace.num_requests, STEADY_WAVES * BATCH),
        keep_steps=True,
        keep_candidates=choices is not None,
        drafter=drafter_for(trace, estimator),
        seed=draw,
        truncate_outputs=STEADY_TRUNCATE,
        steady_window=True,
    )


def step_split(result) -> list[str]:
    seen, rows = set(), []
    for s in result.per_step:
        joined = any(r not in seen for r in s["requests"])
        seen.update(s["requests"])
        wasted = sum(s["accepted"]) + len(s["requests"]) - sum(s["generated"])
        seconds = s["draft_seconds"] + s["select_seconds"] + s["verify_seconds"]
        rows.append(
            (joined, sum(s["verified"]), sum(s["accepted"]), sum(s["generated"]), wasted, 1e3 * seconds)
        )
    a = np.array(rows, dtype=float)
    lines = []
    for flag, label in ((1, "with a prompt"), (0, "without")):
        s = a[a[:, 0] == flag]
        if len(s):
            v, acc, gen, waste, ms = s[:, 1:].mean(0)
            lines.append(
                f"    steps {label:13s} {len(s):4d}: verified {v:6.1f}  accepted {acc:6.1f}  generated "
                f"{gen:6.1f}  thrown away {waste:4.1f}  decoding {ms:5.2f} ms  ({gen / ms:4.2f} tokens/ms)"
            )
    return lines


def main() -> int:
    traces = {n: Trace.load(p) for n, p in SOURCES.items() if n in TUNING and p.exists()}
    tuning = pool(list(traces.values()))
    gpu = roofline("4xH100-70B", chunked_prefill=True)
    runs = policies(False, gpu)
    lines = ["python bench/steady_prompt_steps.py (tuning traces only)"]
    for draw in DRAWS:
        for name in POLICIES:
            make, estimator = runs[name]
            policy, choices = make(), [] if name == COST_AWARE else None
            if choices is not None:
                choose = policy.choose

                def logged(proposal, choose=choose, policy=policy, choices=choices):
                    selected = choose(proposal)
                    deep = int(selected[:, 6:].sum())
                    choices.append((proposal.prefill_tokens or 0, policy.last_floor, deep))
                    return selected

                policy.choose = logged
            result = run(tuning, policy, estimator, gpu, draw, choices)
            tput = result.metrics["steady_decode_throughput_tokens_per_s"]
            lines.append(f"draw {draw}  {name}: steady decode throughput {tput:.0f} tokens/s")
            lines += step_split(result)
            if choices is None:
                continue
            c = np.array(choices, dtype=float)
            for lo, hi in PROMPT_BINS:
                s = c[(c[:, 0] >= lo) & (c[:, 0] < hi)]
                if len(s):
                    floor = np.nanmean(s[:, 1]) if np.isfinite(s[:, 1]).any() else float("nan")
                    lines.append(
                        f"    prompt tokens [{lo}, {min(hi, 99999)}): {len(s):3d} steps, floor {floor:.3f}, "
                        f"verified beyond depth 6: {s[:, 2].mean():4.1f}"
                    )
            k = {key: np.array(v) for key, v in result.candidates.items()}
            by_depth = [
                f"{d}: {k['predicted'][k['depth'] == d].mean():.3f} / {k['accepted'][k['depth'] == d].mean():.3f}"
                for d in range(1, 9)
                if (k["depth"] == d).any()
            ]
            lines.append("    path estimate / accepted by depth  " + ", ".join(by_depth))
    print("\n".join(lines))
    (RESULTS_DIR / "steady_prompt_steps.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
