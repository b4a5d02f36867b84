"""Run Python code in a child process with a time limit and a memory limit, so that a crash,
a hang or a runaway allocation of the code under test fails a test instead of the test run."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from dataclasses import dataclass


@dataclass
class Result:
    returncode: int | None  # None: killed at the time limit
    stdout: str
    stderr: str

    @property
    def crashed(self) -> bool:
        """Killed by a signal (segfault, abort, the kernel's out-of-memory killer)."""
        return self.returncode is not None and self.returncode < 0

    def describe(self) -> str:
        status = "timed out" if self.returncode is None else f"exit status {self.returncode}"
        return f"{status}\n--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-3000:]}"


def _limit_memory(gib: float):
    def apply():
        # RLIMIT_DATA covers the heap and private anonymous mappings (where large tensors go),
        # but not the address space the shared libraries reserve, so torch still imports.
        limit = int(gib * 2**30)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def run_limited(code: str, *, seconds: float, memory_gib: float = 2.0) -> Result:
    """`code` run by this interpreter in a fresh process (same environment, one torch thread)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    try:
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env=env,
            timeout=seconds,
            preexec_fn=_limit_memory(memory_gib),
        )
    except subprocess.TimeoutExpired as expired:
        out = expired.stdout.decode() if isinstance(expired.stdout, bytes) else expired.stdout or ""
        err = expired.stderr.decode() if isinstance(expired.stderr, bytes) else expired.stderr or ""
        return Result(None, out, err)
    return Result(done.returncode, done.stdout, done.stderr)
