"""Builds torch.ops.tetris with CMake (see CMakeLists.txt) into an abi3 wheel.

Environment: TETRIS_CUDA=auto|on|off (default auto), TETRIS_EMULATION=1 to also build the
emulated kernels (tests), CUDA_HOME for the toolkit, TORCH_CUDA_ARCH_LIST for the GPU
architectures (default 9.0 here; the release wheel uses "8.0;9.0;10.0+PTX").
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.bdist_wheel import bdist_wheel

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


def build_tool(module: str, name: str) -> str:
    """cmake and ninja from their PyPI packages (a system cmake may be too old for CUDA C++20)."""
    try:
        bin_dir = getattr(__import__(module), "CMAKE_BIN_DIR" if module == "cmake" else "BIN_DIR")
        return str(Path(bin_dir) / name)
    except (ImportError, AttributeError):
        return shutil.which(name) or name


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = ROOT / "build" / ("emu" if os.environ.get("TETRIS_EMULATION") == "1" else "release")
        if os.environ.get("TETRIS_BUILD_DIR"):  # another environment (another torch): its own CMake cache
            build_dir = ROOT / os.environ["TETRIS_BUILD_DIR"]
        build_dir.mkdir(parents=True, exist_ok=True)
        args = [
            build_tool("cmake", "cmake"), "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja",
            f"-DCMAKE_MAKE_PROGRAM={build_tool('ninja', 'ninja')}",
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DTETRIS_OUTPUT_DIR={out_dir}",
            f"-DTETRIS_CUDA={os.environ.get('TETRIS_CUDA', 'auto')}",
            f"-DTETRIS_EMULATION={'ON' if os.environ.get('TETRIS_EMULATION') == '1' else 'OFF'}",
        ]
        home = cuda_home()
        if home and os.environ.get("TETRIS_CUDA", "auto") != "off":
            args += [f"-DCMAKE_CUDA_COMPILER={home}/bin/nvcc", f"-DCUDA_TOOLKIT_ROOT_DIR={home}"]
        subprocess.run(args, check=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        subprocess.run([build_tool("cmake", "cmake"), "--build", str(build_dir), "-j", jobs], check=True)


class AbiThreeWheel(bdist_wheel):
    """The module uses no Python C-API (TORCH_LIBRARY only), so one wheel fits every CPython 3."""

    def finalize_options(self) -> None:
        super().finalize_options()
        self.root_is_pure = False
        self.py_limited_api = "cp310"


setup(
    ext_modules=[Extension("tetris_ext._C", sources=[], py_limited_api=True)],
    cmdclass={"build_ext": CMakeBuild, "bdist_wheel": AbiThreeWheel},
)
