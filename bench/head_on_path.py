"""Does computing the output head only where greedy acceptance reads it pay on this CPU?

    python bench/head_on_path.py    # writes bench/results/head_on_path.txt

Gemma 3 270M float32, one thread, the first 8 tuning code prompts (bench/prompts/tuning_code.jsonl),
batch 8, 32 new tokens, n-gram drafts with NgramLogistic, the flat loop: StandardSD(3) and
CostAwareTetris, each twice with the head over every verified slot and twice in rounds
(``generate(head_on_path=True)``: roots and their children, then below the accepted children),
alternating; decode CPU seconds (process time less prefill).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cost_aware import MAX_DRAFT, drafter_for, ngram_estimator  # noqa: E402
from sim import load_target  # noqa: E402

from common import RESULTS_DIR  # noqa: E402
from tetris_ext.decoding import generate  # noqa: E402
from tetris_ext.policies import CostAwareTetris, StandardSD  # noqa: E402


def main() -> int:
    torch.set_num_threads(1)
    target, tokenizer = load_target("float32")
    path = Path(__file__).resolve().parent / "prompts" / "tuning_code.jsonl"
    prompts = [tokenizer(json.loads(line)["prompt"]).input_ids for line in path.read_text().splitlines()[:8]]
    cfg = {"max_draft": MAX_DRAFT, "max_ngram": 4, "min_ngram": 1}
    lines = []
    for name, make in [
        ("StandardSD(3)", lambda: StandardSD(3)),
        ("CostAwareTetris", lambda: CostAwareTetris(MAX_DRAFT)),
    ]:
        for on_path in (False, True, False, True):
            result = generate(
                target,
                prompts,
                make(),
                drafter_for(cfg, ngram_estimator()),
                max_new_tokens=32,
                max_batch_size=8,
                flat=True,
                head_on_path=on_path,
                eos_token_id=tokenizer.eos_token_id,
            )
            s = result.stats
            lines.append(
                f"{name:16s} {'rounds' if on_path else 'every slot':10s} decode CPU s "
                f"{s['cpu_seconds'] - s['prefill_cpu_seconds']:5.1f}  steps {s['steps']}  verified "
                f"{s['verified_tokens']}  accepted {s['accepted_tokens']}"
            )
            print(lines[-1], flush=True)
    (RESULTS_DIR / "head_on_path.txt").write_text("python bench/head_on_path.py\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
