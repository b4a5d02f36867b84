"""bench/ops.py on its tiny grid: the script runs, writes its JSON and chart, and every op that
has a CPU kernel agrees with its PyTorch baseline on the benchmark inputs (no timing asserted)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

import tetris_ext  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
OPS = ["select", "draft_cumprod", "tree_mask", "tree_mask_packed", "verify_greedy", "verify_sampling"]


def has_cpu_kernel(op: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"tetris::{op}", "CPU")


def test_ops_bench_tiny_grid(tmp_path):
    prefix = tmp_path / "ops_smoke"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ops.py"), "--tiny", "--seconds-per-case", "0.02",
         "--out", str(prefix)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
        env=os.environ | {"PYTHONPATH": os.pathsep.join(
            [str(Path(tetris_ext.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "issue-2 speed goals" in proc.stdout
    result = json.loads(prefix.with_suffix(".json").read_text())
    assert result["meta"]["torch"] == torch.__version__
    by_op = {op: [r for r in result["rows"] if r["op"] == op] for op in OPS}
    for op, rows in by_op.items():
        assert rows, f"no case for {op}"
        for r in rows:
            if has_cpu_kernel(op):
                assert r["status"] == "ok", (op, r)
                assert r["ours_s"] > 0 and r["baseline_s"] > 0 and math.isfinite(r["ratio"])
            else:
                assert r["status"].startswith("unavailable"), (op, r)
    if any(has_cpu_kernel(op) for op in OPS):
        assert prefix.with_suffix(".png").stat().st_size > 0
