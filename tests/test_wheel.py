"""The release wheel: abi3-tagged, and it works in another environment with the same torch.

Builds the wheel as `make wheel` does (no emulation; CUDA when nvcc is present, for the
architectures in TORCH_CUDA_ARCH_LIST), installs it into a fresh virtual environment that sees
torch but not this checkout, and runs the ops there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

USE_INSTALLED_WHEEL = """
import sys, torch, tetris_ext
assert tetris_ext.__file__.startswith(sys.prefix), tetris_ext.__file__
assert not tetris_ext.HAS_EMULATION, "the release wheel must not carry tetris_emu"
scores = torch.tensor([[-0.1, -0.5, -2.0], [-0.2, -0.3, -0.4]])
selected, counts = tetris_ext.select(scores, 4)
assert counts.tolist() == [1, 3], counts
print("BUILT_WITH_CUDA", tetris_ext.BUILT_WITH_CUDA)
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    env = dict(os.environ, TETRIS_EMULATION="0")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-build-isolation",
            "--no-deps",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
        env=env,
        cwd=out,
    )
    (wheel,) = out.glob("tetris_ext-*.whl")
    return wheel


def test_wheel_is_abi3(wheel):
    assert "-abi3-" in wheel.name, wheel.name


def test_wheel_works_in_another_environment(wheel, tmp_path):
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    # The new environment borrows torch from this one through a .pth entry; the .pth files of
    # this environment (among them the editable install of this checkout) are not processed.
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "borrowed_torch.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # Without PYTHONPATH: a source tree on it (python/, with the egg-info the wheel build leaves
    # there) would make pip skip the install as "already installed".
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        env=environment,
    )
    result = subprocess.run(
        [python, "-c", USE_INSTALLED_WHEEL],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=environment,
    )
    assert result.returncode == 0, result.stderr
    assert "BUILT_WITH_CUDA" in result.stdout
