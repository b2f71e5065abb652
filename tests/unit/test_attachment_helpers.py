"""The client's attachment helpers: sanitised names (SECURITY-TESTS 3), never-overwrite
paths, and cutting a ciphertext stream into relay parts without holding a part whole."""

from __future__ import annotations

import io
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imsg.client import attachments as att
from imsg.crypto import stream


@pytest.mark.parametrize(
    "name, expected",
    [
        ("photo.jpg", "photo.jpg"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\system32\\x.dll", "x.dll"),
        ("/absolute/path/report.pdf", "report.pdf"),
        (".bashrc", "bashrc"),
        ("...", "attachment"),
        ("", "attachment"),
        ("a\x00b.txt", "ab.txt"),
        ("evil\u202egnp.exe", "evilgnp.exe"),  # RTL override: would show as 'exe.png'
        ("line\nbreak\r.txt", "linebreak.txt"),
        ("tab\there.txt", "tabhere.txt"),
        ("\u200bzero-width.txt", "zero-width.txt"),
    ],
)
def test_safe_filename(name, expected):
    assert att.safe_filename(name) == expected


def test_safe_filename_caps_length_and_keeps_the_extension():
    out = att.safe_filename("é" * 400 + ".tar.gz")
    assert len(out.encode()) <= 255 and out.endswith(".gz")
    assert len(att.safe_filename("x" * 4000).encode()) <= 255


@given(st.text(max_size=600))
def test_safe_filename_never_escapes_or_hides(name):
    out = att.safe_filename(name)
    assert out and "/" not in out and "\\" not in out and not out.startswith(".")
    assert len(out.encode()) <= 255
    assert all(ord(c) >= 32 and c not in "\u202e\u202d\u200b\x7f" for c in out)


def test_free_path_never_overwrites(tmp_path):
    first = att.free_path(tmp_path, "a.txt")
    first.write_text("x")
    second = att.free_path(tmp_path, "a.txt")
    assert second.name == "a (2).txt"
    second.write_text("y")
    assert att.free_path(tmp_path, "a.txt").name == "a (3).txt"
    (tmp_path / "noext").write_text("z")
    assert att.free_path(tmp_path, "noext").name == "noext (2)"


@pytest.mark.parametrize("plain_len", [0, 1, stream.SEGMENT, stream.SEGMENT + 1, 5 * stream.SEGMENT + 17])
@pytest.mark.parametrize("part_size", [1000, 65552, 200_000])
def test_parts_cut_the_stream_exactly(plain_len, part_size):
    key = bytes(range(32))
    data = os.urandom(plain_len)
    whole = b"".join(stream.iter_encrypt(key, io.BytesIO(data)))
    total = stream.ciphertext_length(plain_len)
    assert len(whole) == total
    pieces = []
    for length, chunks in att._parts(stream.iter_encrypt(key, io.BytesIO(data), chunk_segments=1), total, part_size):
        part = b"".join(chunks)
        assert len(part) == length <= part_size
        pieces.append(part)
    assert b"".join(pieces) == whole
    assert all(len(p) == part_size for p in pieces[:-1])


def test_a_skipped_part_still_advances_the_stream():
    key = bytes(32)
    data = os.urandom(3 * stream.SEGMENT)
    total = stream.ciphertext_length(len(data))
    whole = b"".join(stream.iter_encrypt(key, io.BytesIO(data)))
    got = []
    for index, (_length, chunks) in enumerate(att._parts(stream.iter_encrypt(key, io.BytesIO(data)), total, 70_000)):
        if index % 2:
            got.append(b"".join(chunks))
        else:
            got.append(None)  # not consumed by the caller (already at the relay)
    offsets = [i * 70_000 for i in range(len(got))]
    for index, part in enumerate(got):
        if part is not None:
            assert part == whole[offsets[index] : offsets[index] + 70_000]
