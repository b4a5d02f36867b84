"""Builds torch.ops.tetris with CMake (see CMakeLists.txt) into an abi3 wheel.

Environment: TETRIS_CUDA=auto|on|off (default auto), TETRIS_EMULATION=1 to also build the
emulated kernels (tests), CUDA_HOME for the toolkit, TORCH_CUDA_ARCH_LIST for the GPU
architectures (default 9.0 here; the release wheel uses "8.0;9.0;10.0+PTX").
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# setuptools >= 70.1 has bdist_wheel; older ones need the wheel package. A bare GPU machine may
# have neither, and `setup.py build_ext --inplace` (tools/gpu_check.py) needs no wheel.
try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:
    try:
        from wheel.bdist_wheel import bdist_wheel
    except ImportError:
        bdist_wheel = object

ROOT = Path(__file__).resolve().parent


def cuda_home() -> str | None:
    """The toolkit folder; the nvcc on PATH may be a wrapper outside it, so ask nvcc."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    dryrun = subprocess.run([nvcc, "--dryrun", "-v", "x.cu"], capture_output=True, text=True)
    for line in (dryrun.stdout + dryrun.stderr).splitlines():
        if line.startswith("#$ TOP="):
            return str(Path(line.split("=", 1)[1]).resolve())
    return str(Path(nvcc).resolve().parent.parent)


def build_tool(module: str, name: str) -> str | None:
    """cmake and ninja from their PyPI packages (a system cmake may be too old for CUDA C++20)."""
    try:
        bin_dir = getattr(__import__(module), "CMAKE_BIN_DIR" if module == "cmake" else "BIN_DIR")
        return str(Path(bin_dir) / name)
    except (ImportError, AttributeError):
        return shutil.which(name)


MIN_CMAKE = (3, 26)  # CMakeLists.txt: cmake_minimum_required
INSTALL_HINT = (
    "install the build requirements into this environment first: pip install 'cmake>=3.26' ninja "
    "(pyproject.toml lists them; --no-build-isolation builds with what the environment has)"
)


def cmake_version(cmake: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run([cmake, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    match = re.search(r"version (\d+)\.(\d+)", out)
    return tuple(int(g) for g in match.groups()) if match else None


def checked_build_tools() -> tuple[str, str]:
    """(cmake, ninja), or a SystemExit naming what is missing before CMake starts (it would
    otherwise stop deep in its output with "CMake 3.26 or higher is required")."""
    cmake, ninja = build_tool("cmake", "cmake"), build_tool("ninja", "ninja")
    problems = []
    version = cmake_version(cmake) if cmake else None
    if version is None:
        problems.append("no working cmake was found" + (f" ({cmake})" if cmake else ""))
    elif version < MIN_CMAKE:
        problems.append(f"cmake {'.'.join(map(str, version))} ({cmake}) is older than 3.26")
    if ninja is None or not Path(ninja).exists():
        problems.append("ninja was not found")
    if problems:
        raise SystemExit(f"tetris_ext build: {'; '.join(problems)}; {INSTALL_HINT}")
    return cmake, ninja


def cached_value(build_dir: Path, name: str) -> str | None:
    cache = build_dir / "CMakeCache.txt"
    if not cache.exists():
        return None
    for line in cache.read_text(errors="replace").splitlines():
        if line.startswith(name + ":"):
            return line.split("=", 1)[1]
    return None


def compiler_changed(build_dir: Path, args: list[str]) -> bool:
    """Whether this configuration passes a compiler other than the cached one. CMake then
    deletes its cache and re-runs without the other -D values of this command, so that
    find_package(Python3) may pick an interpreter without torch; configure afresh instead."""
    for arg in args:
        name, _, value = arg.removeprefix("-D").partition("=")
        if arg.startswith("-DCMAKE_") and name.endswith("_COMPILER"):
            cached = cached_value(build_dir, name)
            if cached is not None and cached != value:
                return True
    return False


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = ROOT / "build" / ("emu" if os.environ.get("TETRIS_EMULATION") == "1" else "release")
        if os.environ.get("TETRIS_BUILD_DIR"):  # another environment (another torch): its own CMake cache
            build_dir = ROOT / os.environ["TETRIS_BUILD_DIR"]
        build_dir.mkdir(parents=True, exist_ok=True)
        cmake, ninja = checked_build_tools()
        args = [
            "-G",
            "Ninja",
            f"-DCMAKE_MAKE_PROGRAM={ninja}",
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DTETRIS_OUTPUT_DIR={out_dir}",
            f"-DTETRIS_CUDA={os.environ.get('TETRIS_CUDA', 'auto')}",
            f"-DTETRIS_EMULATION={'ON' if os.environ.get('TETRIS_EMULATION') == '1' else 'OFF'}",
        ]
        home = cuda_home()
        if home and os.environ.get("TETRIS_CUDA", "auto") != "off":
            args += [f"-DCMAKE_CUDA_COMPILER={home}/bin/nvcc", f"-DCUDA_TOOLKIT_ROOT_DIR={home}"]
        if compiler_changed(build_dir, args):
            print(f"tetris_ext build: the CUDA compiler changed; configuring {build_dir} afresh", flush=True)
            args.append("--fresh")
        subprocess.run([cmake, "-S", str(ROOT), "-B", str(build_dir), *args], check=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        subprocess.run([cmake, "--build", str(build_dir), "-j", jobs], check=True)


class AbiThreeWheel(bdist_wheel):
    """The module uses no Python C-API (TORCH_LIBRARY only), so one wheel fits every CPython 3."""

    def finalize_options(self) -> None:
        super().finalize_options()
        self.root_is_pure = False
        self.py_limited_api = "cp310"


# Only when run as a build script (pip and setuptools' build backend run it as __main__), so that
# tests can load the helpers above (tests/test_setup.py).
if __name__ == "__main__":
    setup(
        ext_modules=[Extension("tetris_ext._C", sources=[], py_limited_api=True)],
        cmdclass={"build_ext": CMakeBuild}
        | ({"bdist_wheel": AbiThreeWheel} if bdist_wheel is not object else {}),
    )
