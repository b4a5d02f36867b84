"""ThresholdSD's threshold chosen on the tuning traces only, as the baselines' settings must be.

`ThresholdSD(t, 6)` (SpecDec++-style stopping: a request verifies its chain while the estimated
probability that some drafted token is rejected stays at or below t) with `NgramLogistic` and
Gemma's token classes, replayed on the three Gemma tuning traces (the bundled prompts,
`prompts/tuning_chat.jsonl`, `prompts/tuning_code.jsonl`) at batch 8 on the live flat loop's cost
line (`cost_aware.flat_cpu_line`), against the best StandardSD(3..5) of the same trace,
beside `CostAwareTetris` (online cost) with and without its drain rule. Deterministic; about 5
minutes on one core.

    python bench/threshold_tuning.py      # results/threshold_tuning.txt
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cost_aware import flat_cpu_line  # noqa: E402
from estimates import SOURCES, TUNING, load_token_classes  # noqa: E402

from common import RESULTS_DIR  # noqa: E402
from tetris_ext.cost_aware import CostAwareTetris  # noqa: E402
from tetris_ext.drafters import NgramDrafter  # noqa: E402
from tetris_ext.estimators import NgramLogistic  # noqa: E402
from tetris_ext.policies import StandardSD, ThresholdSD  # noqa: E402
from tetris_ext.sim import Trace, replay  # noqa: E402

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def throughput(trace: Trace, policy, cost, classes=None) -> float:
    """Replayed tok/s of ``policy`` at batch 8, drafts scored by NgramLogistic (with ``classes``)."""
    drafter = NgramDrafter(8, calibration=NgramLogistic(token_classes=classes))
    result = replay(trace, policy, 8, cost, drafter=drafter, keep_steps=False)
    return result.metrics["throughput_tokens_per_s"]


def main() -> None:
    torch.set_num_threads(1)
    classes, cost = load_token_classes("gemma3-270m"), flat_cpu_line()
    lines = [f"tuning traces, batch 8, {cost.name}; tok/s over the best StandardSD(3..5) of the trace"]
    for source in TUNING:
        trace = Trace.load(SOURCES[source])
        sd = {k: throughput(trace, StandardSD(k), cost) for k in (3, 4, 5)}
        best = max(sd.values())
        cells = [f"best StandardSD({max(sd, key=sd.get)})"]
        cells += [
            f"ThresholdSD({t:g}, 6) {throughput(trace, ThresholdSD(t, 6), cost, classes) / best:.3f}"
            for t in THRESHOLDS
        ]
        for drain in (False, True):
            policy = CostAwareTetris(8, drain=drain)
            cells.append(
                f"CostAwareTetris(drain={drain}) {throughput(trace, policy, cost, classes) / best:.3f}"
            )
        lines.append(f"{source:12s} " + "  ".join(cells))
        print(lines[-1], flush=True)
    (RESULTS_DIR / "threshold_tuning.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
