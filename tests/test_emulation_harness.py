"""The CPU emulation harness (csrc/emulator/) runs CUDA kernel text with CUDA's semantics.

tests/sanitize/emu_harness.cpp is a standalone program (no torch) with small kernels that use
every harness feature (barriers, shuffles, votes, shared memory, atomics, 2-D indices) and
misuse that must stop the launch with a message (a barrier only part of a block reaches, a
shuffle reading outside its mask, ...). The real kernels are compared with the CPU ops in
tests/test_<op>.py (the `kernel_backend` tests).
"""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "tests" / "sanitize" / "emu_harness.cpp"

CHECKS = [
    "block_sum",
    "warp_patterns",
    "votes",
    "half_warps",
    "smem_atomics",
    "schedules_expose_races",
    "deadlock: barrier after early return",
    "divergent barrier",
    "shuffle past a partial warp",
    "lane outside its mask",
    "deadlock: shuffle with an exited lane",
    "mixed warp primitives",
    "invalid launch configuration",
]


# The default context switch (hand-written on x86-64) and glibc's swapcontext (emulator/context.h).
@pytest.fixture(scope="module", params=["default-switch", "ucontext"])
def harness_output(request, tmp_path_factory):
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("g++ is not installed")
    binary = tmp_path_factory.mktemp("emu") / "emu_harness"
    defines = ["-DTETRIS_EMU_UCONTEXT=1"] if request.param == "ucontext" else []
    subprocess.run(
        [
            compiler,
            "-std=c++20",
            "-O1",
            "-Wall",
            "-Wextra",
            "-Werror",
            *defines,
            f"-I{ROOT / 'csrc'}",
            str(SOURCE),
            "-o",
            str(binary),
        ],
        check=True,
    )
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout.splitlines()


@pytest.mark.parametrize("check", CHECKS)
def test_harness_check(harness_output, check):
    assert f"ok {check}" in harness_output


def test_harness_reusable_after_failed_launches(harness_output):
    # block_sum runs again after the misuse checks, which abandon their fibers mid-kernel.
    assert harness_output.count("ok block_sum") == 2
    assert harness_output[-1] == "all harness checks passed"
