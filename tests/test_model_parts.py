"""Assembly of GGUF files split over part packages (tetris_ext.model_parts), on small fake parts."""

from __future__ import annotations

import hashlib
import itertools

import pytest

from tetris_ext import models
from tetris_ext.model_parts import MissingPartsError, PartsMismatchError, SplitGGUF, assemble, part_paths
from tetris_ext.models import QWEN25_CODER, load_qwen25_coder

_unique = itertools.count()


def make_parts(root, chunks: list[bytes], skip=()):
    """Fake part packages ``fakeNpart1..`` under ``root`` (each with get_part_path() -> data/partNN.bin,
    the real packages' layout) and the spec of their concatenation. Parts in ``skip`` are not created."""
    n = next(_unique)
    module_prefix, package_prefix = f"fake{n}_part", f"fake{n}-part"
    for i, chunk in enumerate(chunks, start=1):
        if i in skip:
            continue
        package = root / f"{module_prefix}{i}"
        (package / "data").mkdir(parents=True)
        (package / "data" / f"part{i:02d}.bin").write_bytes(chunk)
        (package / "__init__.py").write_text(
            "import os\n"
            "def get_part_path():\n"
            "    here = os.path.dirname(os.path.abspath(__file__))\n"
            f"    return os.path.join(here, 'data', 'part{i:02d}.bin')\n"
        )
    whole = b"".join(chunks)
    return SplitGGUF(
        f"fake{n}.gguf",
        module_prefix,
        package_prefix,
        len(chunks),
        len(whole),
        hashlib.sha256(whole).hexdigest(),
    )


@pytest.fixture
def parts_root(tmp_path, monkeypatch):
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    return root


CHUNKS = [b"GGUF" + bytes(range(60)), bytes(range(255, 0, -1)) * 3, b"tail"]


def test_assembles_parts_in_numeric_order(parts_root, tmp_path):
    # 12 parts: part10 must come after part9, not after part1 (string order would get this wrong)
    chunks = [bytes([i]) * (i + 1) for i in range(12)]
    spec = make_parts(parts_root, chunks)
    assert [p.name for p in part_paths(spec)] == [f"part{i:02d}.bin" for i in range(1, 13)]
    out = assemble(spec, tmp_path / "out" / spec.filename)
    assert out.read_bytes() == b"".join(chunks)
    assert not out.with_name(out.name + ".tmp").exists()


def test_existing_file_of_right_size_is_reused(parts_root, tmp_path):
    spec = make_parts(parts_root, CHUNKS)
    out = assemble(spec, tmp_path / spec.filename)
    mtime = out.stat().st_mtime_ns
    assert assemble(spec, out) == out and out.stat().st_mtime_ns == mtime


def test_size_mismatch_is_reported_without_writing(parts_root, tmp_path):
    spec = make_parts(parts_root, CHUNKS)
    wrong = SplitGGUF(
        spec.filename, spec.module_prefix, spec.package_prefix, spec.count, spec.size + 1, spec.sha256
    )
    with pytest.raises(PartsMismatchError, match=f"add up to {spec.size} bytes, expected {spec.size + 1}"):
        assemble(wrong, tmp_path / spec.filename)
    assert list(tmp_path.glob("*.gguf*")) == []


def test_checksum_mismatch_leaves_no_file(parts_root, tmp_path):
    # same sizes, swapped content: only the checksum can tell
    spec = make_parts(parts_root, [b"a" * 10, b"b" * 10])
    swapped = make_parts(parts_root, [b"b" * 10, b"a" * 10])
    wrong = SplitGGUF(spec.filename, swapped.module_prefix, swapped.package_prefix, 2, spec.size, spec.sha256)
    with pytest.raises(PartsMismatchError, match="SHA-256"):
        assemble(wrong, tmp_path / spec.filename)
    assert list(tmp_path.glob("*.gguf*")) == []


def test_missing_packages_are_named(parts_root, tmp_path):
    spec = make_parts(parts_root, CHUNKS, skip={1, 3})
    with pytest.raises(MissingPartsError) as info:
        assemble(spec, tmp_path / spec.filename)
    message = str(info.value)
    assert f"needs 2 more of its 3 part packages: {spec.package_prefix}1, {spec.package_prefix}3." in message
    assert "pip install" in message and "tetris_ext[qwen]" in message
    assert isinstance(info.value, ImportError)


def test_missing_part_file_is_reported(parts_root, tmp_path):
    spec = make_parts(parts_root, CHUNKS)
    (parts_root / f"{spec.module_prefix}2" / "data" / "part02.bin").unlink()
    with pytest.raises(PartsMismatchError, match="part02.bin"):
        assemble(spec, tmp_path / spec.filename)


def test_qwen_specs_match_the_extra():
    # the pyproject extra lists exactly the packages the loader asks for
    from pathlib import Path

    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    extra = pyproject["project"]["optional-dependencies"]["qwen"]
    wanted = [p for spec in QWEN25_CODER.values() for p in spec.packages]
    assert sorted(requirement.split("==")[0] for requirement in extra) == sorted(wanted) and len(wanted) == 28


def test_loader_rejects_unknown_sizes():
    with pytest.raises(ValueError, match="argument 'size'.*'0.5b', '1.5b'"):
        load_qwen25_coder("7b")


def test_loader_names_missing_packages_before_converting(tmp_path, monkeypatch):
    # An empty cache and parts that are not installed: the error names them, nothing is written.
    monkeypatch.setenv("TETRIS_EXT_CACHE", str(tmp_path / "cache"))
    absent = SplitGGUF("absent.gguf", "tetris_absent_part", "tetris-absent-part", 2, 10, "0" * 64)
    monkeypatch.setitem(models.QWEN25_CODER, "0.5b", absent)
    with pytest.raises(MissingPartsError, match="tetris-absent-part1, tetris-absent-part2"):
        load_qwen25_coder("0.5b")
    assert not list((tmp_path / "cache").glob("**/*.gguf*")) and not list((tmp_path / "cache").glob("qwen*"))
