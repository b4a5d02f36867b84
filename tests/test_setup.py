"""setup.py's checks before CMake runs: missing or old build tools fail at once with what to
install, and a changed CUDA compiler makes the next configuration start afresh (CMake would
otherwise wipe its cache itself and lose the interpreter it was given)."""

from __future__ import annotations

import runpy
import stat
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETUP = runpy.run_path(str(ROOT / "setup.py"), run_name="setup_under_test")  # setup() runs only as __main__


def fake_tool(folder: Path, name: str, version_line: str) -> str:
    path = folder / name
    path.write_text(f"#!/bin/sh\necho '{version_line}'\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


@pytest.fixture
def tools(tmp_path, monkeypatch):
    """Point setup.py's build_tool at fake cmake / ninja executables (None: not found)."""
    found = {}
    monkeypatch.setitem(
        SETUP["checked_build_tools"].__globals__, "build_tool", lambda module, name: found.get(name)
    )
    return found, tmp_path


def test_old_cmake_fails_before_configuring(tools):
    found, folder = tools
    found["cmake"] = fake_tool(folder, "cmake", "cmake version 3.25.1")
    found["ninja"] = fake_tool(folder, "ninja", "1.11.1")
    with pytest.raises(
        SystemExit, match=r"cmake 3\.25 \(.*\) is older than 3\.26; .*pip install 'cmake>=3\.26' ninja"
    ):
        SETUP["checked_build_tools"]()


def test_missing_tools_are_named(tools):
    with pytest.raises(SystemExit, match="no working cmake was found; ninja was not found; .*pip install"):
        SETUP["checked_build_tools"]()


def test_recent_tools_pass(tools):
    found, folder = tools
    found["cmake"] = fake_tool(folder, "cmake", "cmake version 4.4.5")
    found["ninja"] = fake_tool(folder, "ninja", "1.13.2")
    assert SETUP["checked_build_tools"]() == (found["cmake"], found["ninja"])


def test_a_changed_cuda_compiler_means_a_fresh_configuration(tmp_path):
    changed = SETUP["compiler_changed"]
    args = [
        "-G",
        "Ninja",
        "-DPython3_EXECUTABLE=/venv/bin/python",
        "-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc",
    ]
    assert not changed(tmp_path, args)  # nothing cached yet
    (tmp_path / "CMakeCache.txt").write_text(
        "Python3_EXECUTABLE:FILEPATH=/venv/bin/python\nCMAKE_CUDA_COMPILER:FILEPATH=/usr/local/cuda-13.0/bin/nvcc\n"
    )
    assert changed(tmp_path, args)
    assert not changed(tmp_path, [*args[:3], "-DCMAKE_CUDA_COMPILER=/usr/local/cuda-13.0/bin/nvcc"])
    assert not changed(tmp_path, args[:3])  # a CPU-only build passes no compiler: CMake keeps its cache
