"""How much could better acceptance estimates buy? Replays with the true outcome as the estimate.

    python bench/oracle_ceiling.py        # -> results/oracle_ceiling.{txt,json}

Each held-out Gemma 3 270M trace (code, chat, rewrite; bench/estimates.py records them) is
replayed at batch 8 with this CPU's fitted step-cost model, and each policy runs twice: with
the shipped n-gram estimates (NgramLogistic with Gemma's token classes, the recommended
pairing; bench/cost_aware.py's ngram_estimator) and with oracle estimates
(``replay(oracle=True)``: probability 1 for a candidate on the target's path, ~0 otherwise),
which no estimator can beat. The oracle column is therefore the ceiling of any estimator for
that policy and engine.

Three engines from the same fitted coefficients:

- ``padded``: the fitted model as measured (this project's live loop: a [B, 1 + width] block,
  prefill of every prompt included);
- ``padded, decode only``: the prefill term set to 0 (every policy pays the same prefill);
- ``flattened, decode only``: the query-token term charged on real tokens only, as a varlen
  engine (vLLM) would.

Baselines: StandardSD(k) for every k (the best in hindsight is the reference of each block).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cost_aware import ESTIMATOR, ngram_estimator  # noqa: E402

from common import RESULTS_DIR, format_table, run_metadata  # noqa: E402
from tetris_ext.cost_aware import CostAwareTetris  # noqa: E402
from tetris_ext.cost_models import LinearCostModel  # noqa: E402
from tetris_ext.drafters import NgramDrafter  # noqa: E402
from tetris_ext.policies import StandardSD, Tetris  # noqa: E402
from tetris_ext.sim import Trace, replay  # noqa: E402

TRACES = RESULTS_DIR / "traces"
CPU_COST_PATH = RESULTS_DIR / "cost_model_cpu_gemma3-270m-bf16.json"
HELD_OUT = ("code", "chat", "rewrite")
MAX_DRAFT = 8


def engines() -> dict[str, LinearCostModel]:
    fitted = json.loads(CPU_COST_PATH.read_text())
    decode = fitted | {"coef": fitted["coef"] | {"prefill_token": 0.0}}
    return {
        "padded": LinearCostModel.from_json(fitted),
        "padded, decode only": LinearCostModel.from_json(decode | {"name": fitted["name"] + "-decode"}),
        "flattened, decode only": LinearCostModel.from_json(
            decode | {"name": fitted["name"] + "-decode-flat", "padded": False}
        ),
    }


def policies(padded: bool, cost_model) -> dict:
    """name -> policy factory; SD's choices do not depend on estimates (oracle runs skip it)."""
    runs = {f"StandardSD({k})": (lambda k=k: StandardSD(k)) for k in range(1, MAX_DRAFT + 1)}
    runs["Tetris(3, 2)"] = lambda: Tetris(3, 2)
    runs["CostAwareTetris (known cost)"] = lambda: CostAwareTetris(MAX_DRAFT, padded, cost_model=cost_model)
    return runs


def run_block(source: str, trace: Trace, engine: str, cost_model) -> list[dict]:
    cfg = trace.drafter
    rows = []
    for name, make in policies(cost_model.padded, cost_model).items():
        for oracle in (False, True) if not name.startswith("StandardSD") else (False,):
            drafter = NgramDrafter(
                cfg["max_draft"], cfg["max_ngram"], cfg["min_ngram"], calibration=ngram_estimator()()
            )
            m = replay(trace, make(), 8, cost_model, drafter=drafter, keep_steps=False, oracle=oracle).metrics
            rows.append(
                {
                    "source": source,
                    "engine": engine,
                    "policy": name,
                    "estimates": "oracle" if oracle else ESTIMATOR,
                    "tokens_per_s": m["throughput_tokens_per_s"],
                    "vsr": m["verification_success_rate"],
                    "steps": m["steps"],
                }
            )
    sd = [r for r in rows if r["policy"].startswith("StandardSD")]
    best = max(sd, key=lambda r: r["tokens_per_s"])
    sd3 = next(r for r in sd if r["policy"] == "StandardSD(3)")  # Tetris(3, 2)'s paired baseline
    for r in rows:
        r["best_sd"], r["vs_best_sd"] = best["policy"], r["tokens_per_s"] / best["tokens_per_s"]
        r["vs_sd3"] = r["tokens_per_s"] / sd3["tokens_per_s"]
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "oracle_ceiling")
    args = ap.parse_args(argv)
    rows = []
    for source in HELD_OUT:
        trace = Trace.load(TRACES / f"estimates_gemma3-270m-bf16_{source}_d8_t64.npz")
        for engine, cost_model in engines().items():
            block = run_block(source, trace, engine, cost_model)
            rows += block
            shown = [
                r
                for r in block
                if not r["policy"].startswith("StandardSD") or r["policy"] in (r["best_sd"], "StandardSD(3)")
            ]
            print(f"\n== {source} (held-out), batch 8, {engine}: best SD in hindsight {block[0]['best_sd']}")
            columns = [("policy", "policy"), ("estimates", "estimates"), ("tokens_per_s", "tok/s")]
            columns += [
                ("vs_best_sd", "vs best SD"),
                ("vs_sd3", "vs SD(3)"),
                ("vsr", "VSR"),
                ("steps", "steps"),
            ]
            print(format_table(shown, columns), flush=True)
    meta = run_metadata("cpu") | {
        "command": "python bench/oracle_ceiling.py",
        "cost_model": str(CPU_COST_PATH),
    }
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {args.out}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
