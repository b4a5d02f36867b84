"""The kernels run clean under AddressSanitizer and UndefinedBehaviorSanitizer.

Every tests/sanitize/*.cpp is a standalone program (no torch) that runs kernels through the
CPU emulation harness. Each is built with -fsanitize=address,undefined and
-fno-sanitize-recover=all and run; an out-of-bounds access, a leak or undefined behaviour in
kernel or harness code makes it exit non-zero with a report.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DRIVERS = sorted((ROOT / "tests" / "sanitize").glob("*.cpp"))
REPORT_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


def build_and_run(source: Path, out_dir: Path) -> subprocess.CompletedProcess:
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("g++ is not installed")
    binary = out_dir / source.stem
    subprocess.run(
        [
            compiler,
            "-std=c++20",
            "-O1",
            "-g",
            "-fno-omit-frame-pointer",
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all",
            f"-I{ROOT / 'csrc'}",
            str(source),
            "-o",
            str(binary),
        ],
        check=True,
    )
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0", UBSAN_OPTIONS="print_stacktrace=1")
    return subprocess.run([str(binary)], capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("source", DRIVERS, ids=[d.stem for d in DRIVERS])
def test_clean_under_sanitizers(source, tmp_path):
    run = build_and_run(source, tmp_path)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert not any(marker in output for marker in REPORT_MARKERS), output
