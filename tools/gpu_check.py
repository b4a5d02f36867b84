#!/usr/bin/env python3
"""One command for a bare GPU machine: build the CUDA kernels in place, test them, run them
under compute-sanitizer and benchmark them, within nine minutes of wall time (docs/gpu.md).

    python3 tools/gpu_check.py [--out DIR]            # on the GPU machine (make gpu-check OUT=DIR)
    python3 tools/gpu_check.py --out DIR --dry-run    # anywhere: the plan and its checks, no GPU

Uses the interpreter that runs it, with the torch, pytest and hypothesis it has: no venv, no
network. Builds with `setup.py build_ext --inplace` (TETRIS_CUDA=on, the GPU's own compute
capability, every core), then runs each stage time-boxed, its output in one log file in DIR,
and prints each stage's time. DIR ends up with at most 8 files, none over 16 MiB (all that
comes back from the GPU machine): machine.txt, build.log, tests.log, bench.log, ops_cuda.json,
memcheck.log, racecheck.log, summary.md. Exit status 0 only when every stage passed (a
sanitizer that the runtime refuses counts as skipped, not failed).

--dry-run checks what can be checked without a GPU: the interpreter's torch, the build tools
(with setup.py's own check), and that every pytest selection collects tests; it runs nothing
else and writes summary.md with each stage's command and time limit.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import runpy
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOTAL_BUDGET_S = 540.0  # nine minutes, the build included
SUMMARY_RESERVE_S = 5.0  # kept back from the last stage for the summary
MAX_FILES = 8
MAX_FILE_BYTES = 16 << 20
LOG_CAP_BYTES = 8 << 20  # a longer log keeps its first and last parts

# The op tests: their `cuda` cases (the CUDA kernels against the CPU op, tests/conftest.py's
# backend fixtures), the CPU ops themselves under this torch, and what only CUDA has
# (tests/test_cuda.py: streams, graphs, host synchronisation).
KERNEL_TEST_FILES = [
    "tests/test_cuda.py",
    "tests/test_kernel_backends.py",
    "tests/test_draft_cumprod.py",
    "tests/test_select.py",
    "tests/test_select_prefixes.py",
    "tests/test_tree_mask.py",
    "tests/test_verify_greedy.py",
    "tests/test_verify_sampling.py",
]
# And the build, and the loop's cache and mask exactness tests under this machine's transformers.
TEST_FILES = [*KERNEL_TEST_FILES, "tests/test_build.py", "tests/test_decoding_kv_cache.py"]
# memcheck: the block-boundary and edge shapes, where an out-of-bounds access would be (graphs
# need the caching allocator, which the sanitizer runs switch off). racecheck is slower still:
# a few cases of every op, both select paths. Only the CUDA cases (test ids name the backend).
MEMCHECK_SELECTION = (
    "cuda and (boundaries or misaligned or vocabulary_sizes or batch_shapes or fully_written "
    "or empty_shapes or budget_extremes or many_requests)"
)
RACECHECK_SELECTION = "cuda and (fully_written or (deterministic and not bench))"


@dataclass
class Stage:
    name: str
    limit_s: float  # nominal; time earlier stages left unused is added (see stage_limit)
    argv: list[str]
    log: str  # file name in the output folder
    env: dict[str, str] = field(default_factory=dict)
    needs: tuple[str, ...] = ()  # stages that must have passed first
    collect: list[str] | None = None  # pytest arguments whose collection --dry-run checks


@dataclass
class Result:
    name: str
    status: str  # passed, failed, timeout, skipped, planned
    seconds: float = 0.0
    limit_s: float = 0.0
    note: str = ""


def log(message: str) -> None:
    print(f"[gpu-check] {message}", flush=True)


# -- the machine -----------------------------------------------------------------------------------


def run_quietly(argv: list[str], timeout: float = 20.0) -> str:
    """stdout + stderr of a short command, or why it gave none (never raises)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        return (done.stdout + done.stderr).strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"({shlex.join(argv)}: {e})"


def gpu_arch_and_name() -> tuple[str | None, str | None]:
    """('9.0', 'NVIDIA H200') from torch, else from nvidia-smi; (None, None) without a GPU."""
    import torch

    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        return f"{major}.{minor}", torch.cuda.get_device_name(0)
    line = run_quietly(["nvidia-smi", "--query-gpu=compute_cap,name", "--format=csv,noheader"])
    match = re.match(r"^(\d+\.\d+),\s*(.+)$", line.splitlines()[0] if line else "")
    return (match.group(1), match.group(2).strip()) if match else (None, None)


def toolkit_tool(name: str) -> str | None:
    """A CUDA toolkit program (nvcc, compute-sanitizer): the toolkit is not always on PATH."""
    found = shutil.which(name)
    if found:
        return found
    for home in [
        os.environ.get("CUDA_HOME"),
        "/usr/local/cuda",
        *sorted(map(str, Path("/usr/local").glob("cuda-*"))),
    ]:
        if home and Path(home, "bin", name).exists():
            return str(Path(home, "bin", name))
    return None


def find_sanitizer() -> str | None:
    return toolkit_tool("compute-sanitizer")


def build_cuda_home() -> dict[str, str]:
    """CUDA_HOME for the build when neither it nor nvcc on PATH tells setup.py where the toolkit is."""
    nvcc = toolkit_tool("nvcc")
    if os.environ.get("CUDA_HOME") or shutil.which("nvcc") or nvcc is None:
        return {}
    return {"CUDA_HOME": str(Path(nvcc).parent.parent)}


def machine_report(python: str, sanitizer: str | None) -> str:
    """What ran where: date, commit, GPU, driver and library versions."""
    versions = run_quietly(
        [
            python,
            "-c",
            (
                "import torch, platform; print('python', platform.python_version()); "
                "print('torch', torch.__version__, 'CUDA', torch.version.cuda); "
                "import importlib.util as u; t = u.find_spec('transformers'); "
                "print('transformers', __import__('transformers').__version__ if t else 'absent')"
            ),
        ],
        timeout=90,
    )
    parts = [
        f"date {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}",
        f"commit {run_quietly(['git', 'rev-parse', 'HEAD'])}",
        f"cores {os.cpu_count()}",
        versions,
        run_quietly(["nvidia-smi"]),
        run_quietly([toolkit_tool("nvcc") or "nvcc", "--version"]),
        run_quietly([sanitizer, "--version"]) if sanitizer else "compute-sanitizer: not found",
        run_quietly(["cmake", "--version"]).splitlines()[0]
        if shutil.which("cmake")
        else "cmake: not on PATH",
        f"ninja {run_quietly(['ninja', '--version'])}" if shutil.which("ninja") else "ninja: not on PATH",
    ]
    return "\n\n".join(parts) + "\n"


def default_out_dir(gpu_name: str | None) -> Path:
    name = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name or "unknown-gpu").strip("-")
    return ROOT / "bench" / "results" / f"gpu_{dt.datetime.now(dt.timezone.utc):%Y-%m-%d}_{name}"


# -- the plan --------------------------------------------------------------------------------------


def pytest_argv(python: str, files: list[str], *extra: str) -> list[str]:
    return [python, "-m", "pytest", "-p", "no:cacheprovider", *files, *extra]


def plan(python: str, out: Path, arch: str, jobs: int, sanitizer: str | None) -> list[Stage]:
    build_env = {
        "TETRIS_CUDA": "on",
        "TORCH_CUDA_ARCH_LIST": arch,
        "CMAKE_BUILD_PARALLEL_LEVEL": str(jobs),
        "TETRIS_EMULATION": "0",
        **build_cuda_home(),
    }
    test_env = {"PYTHONPATH": str(ROOT / "python"), "HYPOTHESIS_PROFILE": "ci"}
    # Every tensor its own cudaMalloc: an access past a tensor's end is then outside any allocation.
    sanitize_env = test_env | {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}
    sanitize = [sanitizer or "compute-sanitizer", "--error-exitcode", "1", "--target-processes", "all"]
    memcheck_tests = [*KERNEL_TEST_FILES, "-k", MEMCHECK_SELECTION]
    racecheck_tests = ["tests/test_cuda.py", "tests/test_kernel_backends.py", "-k", RACECHECK_SELECTION]
    return [
        Stage("build", 150, [python, "setup.py", "build_ext", "--inplace"], "build.log", build_env),
        Stage(
            "tests",
            150,
            pytest_argv(python, TEST_FILES, "-v", "--durations=15"),
            "tests.log",
            test_env,
            needs=("build",),
            collect=TEST_FILES,
        ),
        Stage(
            "bench",
            75,
            [
                python,
                "bench/ops.py",
                "--device",
                "cuda",
                "--ops",
                "select",
                "draft_cumprod",
                "--seconds-per-case",
                "0.2",
                "--no-chart",
                "--out",
                str(out / "ops_cuda"),
            ],
            "bench.log",
            test_env,
            needs=("build",),
        ),
        Stage(
            "memcheck",
            90,
            [*sanitize, "--tool", "memcheck", *pytest_argv(python, memcheck_tests, "-q", "-x")],
            "memcheck.log",
            sanitize_env,
            needs=("build",),
            collect=memcheck_tests,
        ),
        Stage(
            "racecheck",
            60,
            [*sanitize, "--tool", "racecheck", *pytest_argv(python, racecheck_tests, "-q", "-x")],
            "racecheck.log",
            sanitize_env,
            needs=("build",),
            collect=racecheck_tests,
        ),
    ]


# -- running a stage -------------------------------------------------------------------------------


def stage_limit(nominal: float, slack: float, deadline: float, now: float) -> float:
    """A stage may use its own limit plus what earlier stages left unused, but never run into
    the summary's reserve before the overall deadline."""
    return max(0.0, min(nominal + slack, deadline - now - SUMMARY_RESERVE_S))


def cap_file(path: Path, cap: int = LOG_CAP_BYTES) -> None:
    """Keep a file under `cap` bytes: its first quarter and its last three quarters survive."""
    size = path.stat().st_size
    if size <= cap:
        return
    head_n, tail_n = cap // 4, cap - cap // 4 - 200
    with path.open("rb") as f:
        head = f.read(head_n)
        f.seek(size - tail_n)
        tail = f.read()
    marker = (
        f"\n\n[gpu-check: {size - head_n - tail_n} bytes cut here to keep the file under {cap} bytes]\n\n"
    )
    path.write_bytes(head + marker.encode() + tail)


def tail_lines(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def run_stage(stage: Stage, out: Path, limit_s: float) -> Result:
    """Run a stage's command with its output in out/<log>, killed (its whole process group)
    when it runs past limit_s."""
    path = out / stage.log
    start = time.monotonic()
    with path.open("a") as sink:
        sink.write(f"$ {shlex.join(stage.argv)}\n# env: {stage.env}\n# limit: {limit_s:.0f} s\n")
        sink.flush()
        process = subprocess.Popen(
            stage.argv,
            cwd=ROOT,
            env=os.environ | stage.env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            status = "passed" if process.wait(timeout=limit_s) == 0 else "failed"
            note = "" if status == "passed" else f"exit status {process.returncode}"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            status, note = "timeout", f"stopped after {limit_s:.0f} s"
        sink.write(f"\n# {stage.name}: {status} in {time.monotonic() - start:.1f} s\n")
    cap_file(path)
    return Result(stage.name, status, time.monotonic() - start, limit_s, note)


def sanitizer_refusal(sanitizer: str | None, python: str, out: Path) -> str | None:
    """Why compute-sanitizer cannot run here (not found, or the runtime refuses it, as gVisor
    does), or None when a tiny CUDA program runs clean under it."""
    if sanitizer is None:
        return "compute-sanitizer not found (PATH, $CUDA_HOME/bin, /usr/local/cuda*/bin)"
    probe = [
        sanitizer,
        "--tool",
        "memcheck",
        "--error-exitcode",
        "1",
        python,
        "-c",
        "import torch; assert torch.ones(4, device='cuda').sum().item() == 4",
    ]
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=90, cwd=ROOT)
        output, ok = done.stdout + done.stderr, done.returncode == 0
    except subprocess.TimeoutExpired:
        output, ok = "(probe timed out after 90 s)", False
    with (out / "memcheck.log").open("a") as sink:
        sink.write(f"$ {shlex.join(probe)}\n{output}\n# probe: {'ok' if ok else 'refused'}\n\n")
    if ok and "ERROR SUMMARY: 0 errors" in output:
        return None
    last = [line for line in output.splitlines() if line.strip()][-1:] or ["no output"]
    return f"compute-sanitizer cannot run on this runtime: {last[0].strip()[:200]}"


# -- dry run ---------------------------------------------------------------------------------------


def build_tools_problem() -> str | None:
    """setup.py's own check of cmake >= 3.26 and ninja (None when both are fine)."""
    try:
        runpy.run_path(str(ROOT / "setup.py"), run_name="setup_check")["checked_build_tools"]()
    except SystemExit as e:
        return str(e)
    return None


def collected_count(python: str, args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """How many tests `pytest --collect-only args` finds (0 with the reason when it fails)."""
    done = subprocess.run(
        pytest_argv(python, args, "--collect-only", "-q"),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=os.environ | env,
        timeout=300,
    )
    match = re.search(r"(\d+)(?:/\d+)? tests? (?:collected|selected)", done.stdout)
    if done.returncode != 0 or not match:
        return 0, tail_lines_text(done.stdout + done.stderr)
    return int(match.group(1)), ""


def tail_lines_text(text: str, n: int = 15) -> str:
    return "\n".join(text.splitlines()[-n:])


def dry_run(stages: list[Stage], python: str) -> list[Result]:
    results = []
    problem = build_tools_problem()
    results.append(
        Result(
            "build",
            "planned" if problem is None else "failed",
            limit_s=stages[0].limit_s,
            note=problem or "cmake >= 3.26 and ninja found",
        )
    )
    for stage in stages[1:]:
        note, status = shlex.join(stage.argv), "planned"
        if stage.collect is not None:
            count, why = collected_count(python, stage.collect, stage.env)
            status = "planned" if count else "failed"
            note = f"{count} tests collected" + (f"; collection failed:\n{why}" if why else "")
        results.append(Result(stage.name, status, limit_s=stage.limit_s, note=note))
    return results


# -- summary ---------------------------------------------------------------------------------------

PYTEST_END = re.compile(r"^=+ (.*(?:passed|failed|error|skipped|no tests ran).*) =+$")
SANITIZER_END = re.compile(r"(ERROR SUMMARY|RACECHECK SUMMARY):.*")


def log_findings(path: Path) -> list[str]:
    """The lines of a log that say how it went: pytest's last line and failures, sanitizer totals."""
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines()
    found = [m.group(1) for line in lines if (m := PYTEST_END.match(line.strip()))][-1:]
    found += [line.strip() for line in lines if line.startswith(("FAILED ", "ERROR "))][:20]
    found += list(dict.fromkeys(m.group(0) for line in lines if (m := SANITIZER_END.search(line))))
    found += [line.strip() for line in lines if "ERROR:" in line and "gpu-check" not in line][:5]
    return found


def bench_findings(path: Path) -> list[str]:
    """One line per benchmark row of ops_cuda.json: our time against each contender."""
    if not path.exists():
        return []
    rows = json.loads(path.read_text())["rows"]
    out = []
    for r in rows:
        shape = " ".join(f"{k}={v}" for k, v in r["shape"].items())
        if r.get("status") != "ok":
            out.append(f"{r['op']} {shape}: {r.get('status')}")
            continue
        line = f"{r['op']} {shape}: ours {r['ours_s'] * 1e6:.1f} us; time / ours: {r['baseline_name']} {r['ratio']:.2f}x"
        line += "".join(f", {k[:-6]} {r[k]:.2f}x" for k in r if k.endswith("_ratio") and k != "read_ratio")
        if "ours_GBps" in r:
            line += f", {r['ours_GBps']:.0f} GB/s (a plain read: {r['read_GBps']:.0f} GB/s)"
        out.append(line)
    return out


def write_summary(out: Path, results: list[Result], header: str) -> str:
    table = ["| stage | status | seconds | limit (s) | note |", "| --- | --- | --- | --- | --- |"]
    for r in results:
        note = r.note.replace("\n", " / ").replace("|", "\\|")[:300]
        table.append(f"| {r.name} | {r.status} | {r.seconds:.1f} | {r.limit_s:.0f} | {note} |")
    sections = [header, "\n".join(table)]
    for name in ["tests.log", "memcheck.log", "racecheck.log"]:
        findings = log_findings(out / name)
        if findings:
            sections.append(f"## {name}\n\n" + "\n".join(f"- {f}" for f in findings))
    bench = bench_findings(out / "ops_cuda.json")
    if bench:
        sections.append(
            "## bench (ops_cuda.json; ratios: contender time / ours)\n\n" + "\n".join(f"- {b}" for b in bench)
        )
    files = sorted(p for p in out.iterdir() if p.is_file()) + [out / "summary.md"]
    files = list(dict.fromkeys(files))
    if len(files) > MAX_FILES:
        sections.append(f"WARNING: {len(files)} files in {out}, more than the {MAX_FILES} that come back")
    text = "\n\n".join(sections) + "\n"
    (out / "summary.md").write_text(text)
    for path in files:
        if path.exists() and path.stat().st_size > MAX_FILE_BYTES:
            cap_file(path, MAX_FILE_BYTES - 1024)
    return text


# -- main ------------------------------------------------------------------------------------------


def run_all(stages: list[Stage], out: Path, python: str, sanitizer: str | None, start: float) -> list[Result]:
    deadline, slack, results = start + TOTAL_BUDGET_S, 0.0, []
    refusal: str | None = None
    for stage in stages:
        failed_needs = [r.name for r in results if r.name in stage.needs and r.status != "passed"]
        if stage.name == "memcheck" and not failed_needs:
            refusal = sanitizer_refusal(sanitizer, python, out)
        limit = stage_limit(stage.limit_s, slack, deadline, time.monotonic())
        if failed_needs:
            result = Result(
                stage.name, "skipped", limit_s=stage.limit_s, note=f"{', '.join(failed_needs)} did not pass"
            )
        elif refusal and stage.name in ("memcheck", "racecheck"):
            result = Result(stage.name, "skipped", limit_s=stage.limit_s, note=refusal)
        elif limit < min(10.0, stage.limit_s):
            result = Result(
                stage.name, "skipped", limit_s=stage.limit_s, note="no time left of the 9 minutes"
            )
        else:
            log(f"{stage.name}: started (limit {limit:.0f} s, {stage.log})")
            result = run_stage(stage, out, limit)
            slack = max(0.0, limit - result.seconds)
        log(
            f"{stage.name}: {result.status} in {result.seconds:.1f} s (limit {result.limit_s:.0f} s)"
            + (f": {result.note}" if result.note else "")
        )
        if result.status in ("failed", "timeout"):
            print(tail_lines(out / stage.log), flush=True)
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="result folder (default bench/results/gpu_<date>_<gpu>)")
    ap.add_argument(
        "--dry-run", action="store_true", help="check the plan without a GPU; build and run nothing"
    )
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="build jobs (default: every core)")
    args = ap.parse_args(argv)
    start = time.monotonic()
    try:
        import torch  # noqa: F401  (the build and every stage use this interpreter's torch)
    except ImportError:
        log(f"{sys.executable} cannot import torch: run this script with the python that has it")
        return 2
    python, sanitizer = sys.executable, find_sanitizer()
    arch, gpu = gpu_arch_and_name()
    if arch is None and not args.dry_run:
        log("no CUDA device: torch sees none and nvidia-smi reports none (use --dry-run to check the plan)")
        return 2
    out = (args.out or default_out_dir(gpu)).resolve()
    out.mkdir(parents=True, exist_ok=True)
    stages = plan(python, out, arch or "9.0", args.jobs, sanitizer)
    header = (
        f"# gpu-check {'dry run' if args.dry_run else 'run'}: {gpu or 'no GPU'} (arch {arch or 'none; 9.0 assumed'})"
        f", {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC\n\npython {python}, {args.jobs} build jobs, "
        f"budget {TOTAL_BUDGET_S:.0f} s"
    )
    if args.dry_run:
        log(f"dry run: {len(stages)} stages, results would go to {out}")
        results = dry_run(stages, python)
        for stage, result in zip(stages, results):
            log(
                f"{stage.name}: {result.status} (limit {stage.limit_s:.0f} s): {shlex.join(stage.argv)}\n    {result.note}"
            )
    else:
        machine = time.monotonic()
        (out / "machine.txt").write_text(machine_report(python, sanitizer))
        log(f"machine: {time.monotonic() - machine:.1f} s (machine.txt); GPU {gpu}, arch {arch}")
        results = run_all(stages, out, python, sanitizer, start)
    print(write_summary(out, results, header), flush=True)
    log(f"total {time.monotonic() - start:.1f} s; results in {out}")
    return (
        0
        if all(r.status in ("passed", "planned", "skipped") for r in results)
        and not any(r.status == "skipped" and "did not pass" in r.note for r in results)
        else 1
    )


if __name__ == "__main__":
    sys.exit(main())
