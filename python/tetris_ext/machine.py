"""The machine a result came from, recorded beside every figure (the demo, bench/ scripts).

This project's hosts differ (AVX-512 with AMX on some, AVX2 only on others, shared cores), so
figures from different days compare as ratios, never as rates; the CPU's name says which.
"""

from __future__ import annotations

import platform
from pathlib import Path

__all__ = ["cpu_model"]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
