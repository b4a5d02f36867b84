"""What every benchmark script shares: side-by-side timing, run metadata, result files.

Timing is interleaved: each repetition runs every contender once, in turn, so that noise from
other processes on a shared machine (this one has 2 cores and several tenants) hits all of
them alike; the reported time is the median over repetitions. On CUDA the time of a
repetition comes from CUDA events on the current stream.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from tetris_ext.machine import cpu_model  # noqa: F401 (bench scripts import it from here)

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time_once(fn: Callable[[], object], inner: int, device: str) -> float:
    """Seconds per call of fn, averaged over `inner` back-to-back calls."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / inner
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner


def time_side_by_side(
    contenders: dict[str, Callable[[], object]],
    device: str = "cpu",
    warmup: int = 3,
    min_reps: int = 9,
    max_reps: int = 60,
    min_rep_seconds: float = 1e-3,
    seconds_per_case: float = 2.0,
) -> dict[str, list[float]]:
    """Seconds per call of each contender in every repetition of one interleaved loop.

    Each repetition calls a contender `inner` times in a row so that one repetition lasts at
    least `min_rep_seconds` (timer resolution, launch noise); the number of repetitions fits
    `seconds_per_case` but never falls below `min_reps`. Callers take medians, and for ratios
    the median of the per-repetition ratios: the two sides of a ratio ran back to back, so a
    burst of load from another process slows both (see `paired_ratio`).
    """
    inner: dict[str, int] = {}
    for name, fn in contenders.items():
        for _ in range(warmup):
            fn()
        _sync(device)
        one = max(_time_once(fn, 1, device), 1e-7)
        inner[name] = max(1, math.ceil(min_rep_seconds / one))
    per_rep = sum(_time_once(fn, inner[n], device) * inner[n] for n, fn in contenders.items())
    reps = int(min(max_reps, max(min_reps, seconds_per_case / max(per_rep, 1e-9))))
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(reps):
        for name, fn in contenders.items():
            samples[name].append(_time_once(fn, inner[name], device))
    return samples


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over repetitions of numerator[i] / denominator[i] (measured back to back)."""
    return statistics.median(n / d for n, d in zip(numerator, denominator))


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def run_metadata(device: str) -> dict:
    """Machine, software and date of a run, stored with every result file."""
    meta = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "git_commit": _git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    try:
        meta["load_average_1m"] = os.getloadavg()[0]
    except OSError:
        pass
    if device == "cuda":
        meta["gpu"] = torch.cuda.get_device_name()
        meta["cuda"] = torch.version.cuda
    return meta


def write_json(path: Path, payload: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, sort_keys=False) + "\n")
    return path


def format_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """Plain-text table; columns are (key, header) pairs; floats get 3 significant digits."""

    def cell(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
        return "" if v is None else str(v)

    body = [[cell(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, (_, h) in enumerate(columns)]
    lines = ["  ".join(h.rjust(w) for (_, h), w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def save_figure(fig, path: Path, title: str, top: float) -> None:
    """A chart's common ending: `title` above every panel, the panels laid out below `top` (a
    fraction of the figure's height, room for the title), the file written, the figure freed."""
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, top))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def decode_summary(stats: dict) -> dict:
    """A live run's decode throughput (generated tokens per CPU second, prefill excluded),
    steps and verification success rate, from ``generate(...).stats``."""
    return {
        "tok_per_decode_cpu_s": stats["generated_tokens"]
        / (stats["cpu_seconds"] - stats["prefill_cpu_seconds"]),
        "steps": stats["steps"],
        "vsr": stats["accepted_tokens"] / max(1, stats["verified_tokens"]),
    }
