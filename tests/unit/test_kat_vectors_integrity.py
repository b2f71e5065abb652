"""The vendored vector files are the ones recorded in tests/vectors/SHA256SUMS
(see tests/vectors/SOURCES.md), so a vector file cannot change or appear silently."""

from __future__ import annotations

import hashlib
from pathlib import Path

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
_NOT_VECTORS = {"SHA256SUMS", "SOURCES.md", "make_vendored.py"}


def _sums() -> dict[str, str]:
    sums = {}
    for line in (VECTORS / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        sums[name.lstrip("*")] = digest
    return sums


def test_vector_files_match_sha256sums():
    sums = _sums()
    assert len(sums) >= 7
    for name, digest in sums.items():
        assert hashlib.sha256((VECTORS / name).read_bytes()).hexdigest() == digest, name


def test_every_vector_file_is_listed_and_sourced():
    files = {
        p.relative_to(VECTORS).as_posix()
        for p in VECTORS.rglob("*")
        if p.is_file() and p.name not in _NOT_VECTORS and "__pycache__" not in p.parts
    }
    assert files == set(_sums())
    sources = (VECTORS / "SOURCES.md").read_text()
    for name in files:
        assert name in sources, f"{name} has no entry in SOURCES.md"
