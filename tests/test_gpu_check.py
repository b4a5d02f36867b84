"""tools/gpu_check.py (`make gpu-check`) without a GPU: its dry run end to end, and the pieces
a real run depends on (time-boxed stages that are killed, slack between stages, log caps,
the summary's findings), on small commands."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "gpu_check.py"

spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gpu_check = importlib.util.module_from_spec(spec)
sys.modules["gpu_check"] = gpu_check  # dataclasses look their module up by name
spec.loader.exec_module(gpu_check)


def test_dry_run_plans_every_stage_and_collects_every_selection(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for stage in ["build", "tests", "bench", "memcheck", "racecheck"]:
        assert f"[gpu-check] {stage}: planned" in done.stdout, done.stdout
    summary = (tmp_path / "summary.md").read_text()
    counts = {
        name: int(n)
        for name, n in __import__("re").findall(
            r"\| (tests|memcheck|racecheck) \| planned \| [\d.]+ \| \d+ \| (\d+) tests collected", summary
        )
    }
    assert set(counts) == {"tests", "memcheck", "racecheck"}, summary
    # the sanitizer selections are proper subsets of the CUDA tests, the full run has more
    assert 0 < counts["racecheck"] < counts["memcheck"] < counts["tests"], counts
    assert list(tmp_path.iterdir()) == [tmp_path / "summary.md"]


def test_plan_builds_for_the_gpu_in_place_and_keeps_within_the_limits(tmp_path):
    stages = gpu_check.plan("python3", tmp_path, "9.0", 16, "/opt/cuda/bin/compute-sanitizer")
    build = stages[0]
    assert build.argv == ["python3", "setup.py", "build_ext", "--inplace"]
    assert build.env["TETRIS_CUDA"] == "on" and build.env["TORCH_CUDA_ARCH_LIST"] == "9.0"
    assert build.env["CMAKE_BUILD_PARALLEL_LEVEL"] == "16"
    assert sum(s.limit_s for s in stages) <= gpu_check.TOTAL_BUDGET_S - gpu_check.SUMMARY_RESERVE_S
    logs = {s.log for s in stages} | {"machine.txt", "summary.md", "ops_cuda.json"}
    assert len(logs) <= gpu_check.MAX_FILES
    bench = next(s for s in stages if s.name == "bench")
    assert "--no-chart" in bench.argv and str(tmp_path / "ops_cuda") in bench.argv
    for name in ["memcheck", "racecheck"]:
        stage = next(s for s in stages if s.name == name)
        assert stage.argv[:2] == ["/opt/cuda/bin/compute-sanitizer", "--error-exitcode"]
        assert stage.env["PYTORCH_NO_CUDA_MEMORY_CACHING"] == "1"


def stage(tmp_path, code: str, name="probe"):
    return gpu_check.Stage(name, 5, [sys.executable, "-c", code], f"{name}.log")


def test_a_stage_past_its_limit_is_killed_with_its_children(tmp_path):
    pid_file = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time; "
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(pid_file)!r}, 'w').write(str(c.pid)); print('started', flush=True); time.sleep(60)"
    )
    start = time.monotonic()
    result = gpu_check.run_stage(stage(tmp_path, code), tmp_path, limit_s=3)
    assert result.status == "timeout" and 2.5 < time.monotonic() - start < 20
    text = (tmp_path / "probe.log").read_text()
    assert "started" in text and "probe: timeout" in text
    child = int(pid_file.read_text())
    time.sleep(0.5)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]


def test_stage_status_follows_the_exit_code(tmp_path):
    assert gpu_check.run_stage(stage(tmp_path, "print('ok')", "good"), tmp_path, 30).status == "passed"
    failed = gpu_check.run_stage(stage(tmp_path, "import sys; sys.exit(3)", "bad"), tmp_path, 30)
    assert failed.status == "failed" and failed.note == "exit status 3"


def test_unused_time_passes_on_but_never_past_the_deadline():
    assert gpu_check.stage_limit(60, 0, deadline=1000, now=0) == 60
    assert gpu_check.stage_limit(60, 40, deadline=1000, now=0) == 100
    assert gpu_check.stage_limit(60, 40, deadline=1000, now=950) == 50 - gpu_check.SUMMARY_RESERVE_S
    assert gpu_check.stage_limit(60, 0, deadline=1000, now=999) == 0


def test_a_long_log_is_cut_in_the_middle(tmp_path):
    path = tmp_path / "big.log"
    path.write_bytes(b"HEAD\n" + b"x" * 3_000_000 + b"\nTAIL\n")
    gpu_check.cap_file(path, cap=100_000)
    data = path.read_bytes()
    assert len(data) <= 100_000 and data.startswith(b"HEAD") and data.endswith(b"TAIL\n")
    assert b"bytes cut here" in data


def test_summary_reports_stages_tests_sanitizers_and_bench(tmp_path):
    (tmp_path / "tests.log").write_text(
        "FAILED tests/test_cuda.py::test_x - AssertionError\n"
        "======= 1 failed, 410 passed in 61.20s (0:01:01) =======\n"
    )
    (tmp_path / "memcheck.log").write_text("========= ERROR SUMMARY: 0 errors\n=== 30 passed in 80.1s ===\n")
    rows = [
        {
            "op": "select",
            "shape": {"B": 256, "N": 16},
            "status": "ok",
            "ours_s": 9e-6,
            "baseline_name": "composite",
            "ratio": 5.0,
            "topk_budget_s": 3e-5,
            "topk_budget_ratio": 3.3,
        },
        {
            "op": "draft_cumprod",
            "shape": {"B": 64},
            "status": "ok",
            "ours_s": 1e-4,
            "baseline_name": "b",
            "ratio": 2.0,
            "ours_GBps": 3000.0,
            "read_GBps": 4000.0,
            "read_ratio": 0.75,
        },
    ]
    (tmp_path / "ops_cuda.json").write_text(json.dumps({"rows": rows}))
    results = [
        gpu_check.Result("build", "passed", 70.0, 180),
        gpu_check.Result("tests", "failed", 61, 150, "exit status 1"),
    ]
    text = gpu_check.write_summary(tmp_path, results, "# header")
    assert "| build | passed | 70.0 | 180 |" in text and "| tests | failed |" in text
    assert "1 failed, 410 passed in 61.20s (0:01:01)" in text and "FAILED tests/test_cuda.py::test_x" in text
    assert "ERROR SUMMARY: 0 errors" in text
    assert "select B=256 N=16: ours 9.0 us; time / ours: composite 5.00x, topk_budget 3.30x" in text
    assert "3000 GB/s (a plain read: 4000 GB/s)" in text and "read 0.75x" not in text
    assert (tmp_path / "summary.md").read_text() == text


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_without_a_gpu_a_real_run_stops_at_once(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 2 and "no CUDA device" in done.stdout
    assert not list(tmp_path.iterdir())


def test_run_all_skips_what_depends_on_a_failed_stage_and_a_missing_sanitizer(tmp_path):
    stages = [
        stage(tmp_path, "import sys; sys.exit(1)", "build"),
        gpu_check.Stage("tests", 5, [sys.executable, "-c", "pass"], "tests.log", needs=("build",)),
        stage(tmp_path, "print('timed')", "bench"),
        gpu_check.Stage("memcheck", 5, [sys.executable, "-c", "pass"], "memcheck.log"),
        gpu_check.Stage("racecheck", 5, [sys.executable, "-c", "pass"], "racecheck.log"),
    ]
    results = gpu_check.run_all(stages, tmp_path, sys.executable, None, time.monotonic())
    status = {r.name: (r.status, r.note) for r in results}
    assert status["build"] == ("failed", "exit status 1")
    assert status["tests"] == ("skipped", "build did not pass")
    assert status["bench"][0] == "passed" and "timed" in (tmp_path / "bench.log").read_text()
    for name in ["memcheck", "racecheck"]:
        assert status[name][0] == "skipped" and "compute-sanitizer not found" in status[name][1]


def test_run_all_skips_stages_once_the_nine_minutes_are_spent(tmp_path):
    stages = [stage(tmp_path, "pass", "build")]
    started_long_ago = time.monotonic() - gpu_check.TOTAL_BUDGET_S + 8
    [result] = gpu_check.run_all(stages, tmp_path, sys.executable, None, started_long_ago)
    assert result.status == "skipped" and "no time left" in result.note


def test_machine_report_names_the_software(tmp_path):
    report = gpu_check.machine_report(sys.executable, None)
    assert f"torch {torch.__version__}" in report and "transformers" in report
    assert "compute-sanitizer: not found" in report and f"cores {__import__('os').cpu_count()}" in report
