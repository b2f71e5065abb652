"""Attachments through a real relay with the client library (issue 4, SECURITY-TESTS 2 and 3).

The relay runs in a thread with 1 MiB parts (so multi-part uploads are cheap) behind a
recording ASGI middleware: every request's method, path and Range header is logged, which
is how these tests count blob GETs and part PUTs without reading any log.

- round trips: 0 B, 1 B, one segment, one segment + 1, exactly two parts of ciphertext,
  more than three parts; several attachments in one message, text + attachments,
  attachment-only; drafts; the sync copy on the sender's second device;
- receive records name, size and type and fetches no blob;
- saved files: byte-identical, 0600, sanitised names, never overwriting;
- a malicious relay (swapped, truncated, appended blob) is caught by length and digest
  before anything is decrypted, and leaves no file behind;
- resumed uploads send no part twice; resumed downloads continue with a Range request;
- a purged blob is a clear 404 error and no partial file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

import pytest
from device_helpers import link_device

from imsg import errors
from imsg.client import Client
from imsg.client import attachments as attachment_io
from imsg.crypto import stream
from imsg.protocol.content import MAX_NAME_LEN
from imsg.relay_client import AnonymousRelay, RelayClient

from support.recorder import Recorder
from support.relays import ThreadRelay, relay_settings

KIB, MIB = 1024, 1024 * 1024
PART = 1 * MIB
BOB = "bob@example.com"
SEG = stream.SEGMENT


def start_recorded_relay(data_dir: Path, **overrides):
    """A thread relay whose app is wrapped in a Recorder (`.recorder`)."""
    r = ThreadRelay(relay_settings(data_dir, **overrides), wrap=Recorder).start()
    r.recorder = r.middleware
    return r


@pytest.fixture(scope="module")
def relay(tmp_path_factory):
    """Overrides tests/conftest.py's relay (and so make_client's) for this module: one
    relay for every test, 1 MiB parts, recorded."""
    r = start_recorded_relay(tmp_path_factory.mktemp("relay") / "data", blob_part_size=PART)
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture(scope="module")
def accounts(relay, tmp_path_factory):
    """alice and bob, registered once for the module (registration is the slow part)."""
    base = tmp_path_factory.mktemp("homes")
    clients = []
    for name in ("alice", "bob"):
        c = Client.open(base / name, relay=relay.url)
        c.init(f"{name}@example.com", name=name.capitalize())
        clients.append(c)
    yield tuple(clients)
    for c in clients:
        c.close()


@pytest.fixture
def pair(accounts, relay):
    """(alice, bob), with nothing waiting for bob and an empty request log."""
    alice, bob = accounts
    bob.receive()
    alice.problems.clear()
    bob.problems.clear()
    relay.recorder.log.clear()
    return alice, bob


def data(n: int, seed: int = 0) -> bytes:
    """n deterministic, incompressible-looking bytes."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(b"%d/%d" % (seed, counter)).digest() * 64  # 2 KiB per hash
        counter += 1
    return bytes(out[:n])


def write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def blob_file(relay, blob_id: str) -> Path:
    return relay.data_dir / "blobs" / blob_id[:2] / blob_id


def only_message(client: Client):
    got = client.receive()
    assert len(got) == 1, got
    return got[0]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- round trips ---


def test_round_trips_of_every_edge_size(pair, relay, tmp_path):
    alice, bob = pair
    sizes = [0, 1, SEG, SEG + 1, 2 * PART - 32 * stream.TAG, 3 * PART + 17]
    # 2 MiB - 512: a ciphertext of exactly two parts; 3 MiB + 17: four parts, the last short.
    assert stream.ciphertext_length(sizes[4]) == 2 * PART
    for i, n in enumerate(sizes):
        content = data(n, seed=i)
        src = write(tmp_path / "src" / f"file{i}.bin", content)
        sent = alice.send(BOB, attachments=[src])
        m = only_message(bob)
        blob_id = m.attachments[0].id
        with relay.db() as db:
            row = db.execute("SELECT size, part_size, complete FROM blobs WHERE blob_id = ?", (blob_id,)).fetchone()
        size = row[0]
        assert row == (stream.ciphertext_length(n), PART, 1)
        assert sorted(relay.recorder.part_puts(blob_id)) == list(range(-(-size // PART)))
        assert m.id == sent.id and m.text == ""
        assert [(a.id, a.name, a.size, a.type) for a in m.attachments] == [
            (blob_id, f"file{i}.bin", n, "application/octet-stream")
        ]
        assert relay.recorder.blob_gets() == []  # receiving downloads nothing
        out = tmp_path / f"out{i}"
        (path,) = bob.save_attachments(m.id, out)
        assert path == out / f"file{i}.bin"
        assert path.read_bytes() == content and mode(path) == 0o600
        assert sorted(p.name for p in out.iterdir()) == [f"file{i}.bin"]  # no temp left
        assert relay.recorder.blob_gets() == [(f"/v1/blobs/{blob_id}", "")]
        relay.recorder.log.clear()
        assert bob.with_saved_paths(m).attachments[0].saved_path == str(path)


def test_several_attachments_with_text_and_attachment_only(pair, relay, tmp_path):
    alice, bob = pair
    files = {"a.txt": b"hello\n", "b.png": data(PART + 5, 1), "c": data(3, 2)}
    paths = [write(tmp_path / "src" / n, c) for n, c in files.items()]
    sent = alice.send(BOB, "three files", attachments=paths)
    only = alice.send(BOB, attachments=[paths[0]])  # the same file again: a fresh blob and key
    first, second = bob.receive()
    assert (first.id, first.text, second.id, second.text) == (sent.id, "three files", only.id, "")
    assert [(a.name, a.size, a.type) for a in first.attachments] == [
        ("a.txt", 6, "text/plain"),
        ("b.png", PART + 5, "image/png"),
        ("c", 3, "application/octet-stream"),
    ]
    assert second.attachments[0].id not in {a.id for a in first.attachments}
    assert relay.recorder.blob_gets() == []
    saved = bob.save_attachments(first.id, tmp_path / "out")
    assert [p.name for p in saved] == ["a.txt", "b.png", "c"]
    assert [p.read_bytes() for p in saved] == list(files.values())
    # The sender can save its own sent attachments too (it kept the pointers).
    (mine,) = alice.save_attachments(only.id, tmp_path / "alice-out")
    assert mine.read_bytes() == b"hello\n"
    # Saving again returns the files already saved: no second download.
    gets = len(relay.recorder.blob_gets())
    assert bob.save_attachments(first.id, tmp_path / "out") == saved
    assert len(relay.recorder.blob_gets()) == gets


def test_empty_message_and_missing_file_are_usage_errors(pair, tmp_path):
    alice, _ = pair
    with pytest.raises(errors.UsageError):
        alice.send(BOB)
    with pytest.raises(errors.UsageError, match="cannot read"):
        alice.send(BOB, attachments=[tmp_path / "nope"])
    with pytest.raises(errors.UsageError, match="not a file"):
        alice.send(BOB, attachments=[tmp_path])


def test_drafts(pair, relay, tmp_path):
    alice, bob = pair
    content = data(2 * PART + 3, 7)
    src = write(tmp_path / "src" / "holiday.mov", content)
    draft = alice.attach(src)
    assert (draft.name, draft.size, draft.type) == ("holiday.mov", len(content), "video/quicktime")
    assert [d.id for d in alice.drafts()] == [draft.id]
    puts = len(relay.recorder.part_puts())
    assert puts == 3
    with pytest.raises(errors.LocalStateError, match="no draft attachment") as exc:
        alice.send(BOB, "x", drafts=["0" * 32])
    assert exc.value.exit_code == 3
    assert bob.receive() == []  # nothing sent for the unknown draft
    sent = alice.send(BOB, "the video", drafts=[draft.id])
    assert len(relay.recorder.part_puts()) == puts  # the draft is not uploaded again
    assert alice.drafts() == []  # sent: no longer a draft
    with pytest.raises(errors.LocalStateError, match="no draft attachment"):
        alice.send(BOB, "again", drafts=[draft.id])
    m = only_message(bob)
    assert (m.id, m.text, m.attachments[0].id) == (sent.id, "the video", draft.id)
    (path,) = bob.save_attachments(m.id, tmp_path / "out")
    assert path.read_bytes() == content


def test_drafts_and_files_in_one_message(pair, tmp_path):
    alice, bob = pair
    d = alice.attach(write(tmp_path / "src" / "one.txt", b"1"))
    sent = alice.send(BOB, attachments=[write(tmp_path / "src" / "two.txt", b"22")], drafts=[d.id])
    m = only_message(bob)
    assert m.id == sent.id and [a.name for a in m.attachments] == ["one.txt", "two.txt"]
    assert [p.read_bytes() for p in bob.save_attachments(m.id, tmp_path / "out")] == [b"1", b"22"]


def _link(make_client, relay, existing: Client, home: Path, name: str) -> Client:
    link_device(relay.url, existing, home)
    return make_client(name, home=home)


def test_sync_copy_on_the_senders_second_device_carries_the_attachments(make_client, relay, tmp_path):
    sam, tia = make_client("sam"), make_client("tia")  # accounts of their own: linking changes sam's
    laptop = _link(make_client, relay, sam, tmp_path / "homes" / "sam-laptop", "sam-laptop")
    content = data(PART + 1, 3)
    sent = sam.send("tia@example.com", "from the phone", attachments=[write(tmp_path / "src" / "scan.pdf", content)])
    assert laptop.receive() == []  # a sync copy is history, not a new incoming message
    (copy,) = [m for m in laptop.history("tia@example.com", 10) if m.id == sent.id]
    assert (copy.direction, copy.peer, copy.text) == ("out", "tia@example.com", "from the phone")
    assert [(a.name, a.size, a.type) for a in copy.attachments] == [("scan.pdf", len(content), "application/pdf")]
    (path,) = laptop.save_attachments(copy.id, tmp_path / "laptop-out")
    assert path.read_bytes() == content
    (m,) = tia.receive()
    assert tia.save_attachments(m.id, tmp_path / "tia-out")[0].read_bytes() == content


# --- saved files: names, modes, no overwrite (SECURITY-TESTS 3) ---

ODD_NAMES = [
    ("../../x.txt", "x.txt"),
    ("..\\..\\win.txt", "win.txt"),
    ("/etc/passwd", "passwd"),
    ("nul\x00byte.txt", "nulbyte.txt"),
    ("invoice\u202etxt.exe", "invoicetxt.exe"),  # RTL override: would show as invoiceexe.txt
    ("line\nbreak\r.txt", "linebreak.txt"),
    ("\x1b[31mred.txt", "[31mred.txt"),  # the ESC goes; what is left is plain text
    (".hidden", "hidden"),
    ("..", "attachment"),
    ("\u200b\u202e", "attachment"),
]


@pytest.mark.parametrize("sent_name,saved_name", ODD_NAMES, ids=[repr(n) for n, _ in ODD_NAMES])
def test_odd_names_are_made_safe(pair, tmp_path, monkeypatch, sent_name, saved_name):
    alice, bob = pair
    monkeypatch.setattr(attachment_io, "describe", lambda path: (sent_name, "text/plain"))
    sent = alice.send(BOB, attachments=[write(tmp_path / "src" / "f", b"payload")])
    m = only_message(bob)
    assert m.attachments[0].name == sent_name  # recorded as sent, sanitised only on disk
    out = tmp_path / "out" / "inner"
    (path,) = bob.save_attachments(sent.id, out)
    assert path.parent == out and path.name == saved_name
    assert path.read_bytes() == b"payload" and mode(path) == 0o600
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["inner"]  # nothing escaped
    assert sorted(p.name for p in out.iterdir()) == [saved_name]


def test_a_4kb_name_is_cut_to_fit(pair, tmp_path, monkeypatch):
    alice, bob = pair
    long_name = "日" * 1400 + ".txt"  # 4.2 kB of UTF-8
    real = attachment_io.describe
    monkeypatch.setattr(attachment_io, "describe", lambda path: real(Path(long_name)))
    sent = alice.send(BOB, attachments=[write(tmp_path / "src" / "f", b"x")])
    m = only_message(bob)
    assert len(m.attachments[0].name) == MAX_NAME_LEN
    (path,) = bob.save_attachments(sent.id, tmp_path / "out")
    assert len(path.name.encode()) <= 255 and path.name.startswith("日")
    assert path.read_bytes() == b"x"


def test_saving_never_overwrites(pair, tmp_path):
    alice, bob = pair
    out = tmp_path / "out"
    write(out / "report.txt", b"mine")
    write(out / "report (2).txt", b"mine too")
    src = write(tmp_path / "src" / "report.txt", b"theirs")
    ids = [alice.send(BOB, attachments=[src]).id for _ in range(2)]
    bob.receive()
    (first,) = bob.save_attachments(ids[0], out)
    (second,) = bob.save_attachments(ids[1], out)
    assert (first.name, second.name) == ("report (3).txt", "report (4).txt")
    assert (out / "report.txt").read_bytes() == b"mine" and (out / "report (2).txt").read_bytes() == b"mine too"
    assert first.read_bytes() == second.read_bytes() == b"theirs"


# --- a malicious relay (SECURITY-TESTS 2) ---


@pytest.fixture
def no_decrypt(monkeypatch):
    """Counts stream.decrypt_file calls (the checks must come before any)."""
    calls = []
    real = stream.decrypt_file

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(stream, "decrypt_file", counting)
    return calls


def _two_equal_blobs(alice, bob, tmp_path, n=3 * SEG + 100):
    alice.send(BOB, attachments=[write(tmp_path / "src" / "a.bin", data(n, 1))])
    alice.send(BOB, attachments=[write(tmp_path / "src" / "b.bin", data(n, 2))])
    ma, mb = bob.receive()
    return ma, mb


def _assert_nothing_left(out: Path):
    assert not out.exists() or list(out.iterdir()) == []


def test_swapped_blob_is_rejected_before_decrypting(pair, relay, tmp_path, no_decrypt):
    alice, bob = pair
    ma, mb = _two_equal_blobs(alice, bob, tmp_path)
    shutil.copyfile(blob_file(relay, mb.attachments[0].id), blob_file(relay, ma.attachments[0].id))
    out = tmp_path / "out"
    with pytest.raises(errors.SecurityError, match="integrity") as exc:
        bob.save_attachments(ma.id, out)
    assert exc.value.exit_code == 6
    assert no_decrypt == []
    _assert_nothing_left(out)
    assert bob.with_saved_paths(ma).attachments[0].saved_path == ""
    # The other one is intact and still saves.
    assert bob.save_attachments(mb.id, out)[0].read_bytes() == data(3 * SEG + 100, 2)


def test_swapped_blob_id_is_rejected(pair, relay, tmp_path, no_decrypt):
    """The relay answers one id with another blob's row and bytes (as in the 2016 attack)."""
    alice, bob = pair
    ma, mb = _two_equal_blobs(alice, bob, tmp_path)
    a_id, b_id = ma.attachments[0].id, mb.attachments[0].id
    path_a, path_b = blob_file(relay, a_id), blob_file(relay, b_id)
    tmp = path_a.with_name("swap")
    os.rename(path_a, tmp)
    os.rename(path_b, path_a)
    os.rename(tmp, path_b)
    with relay.db() as db:
        db.execute(
            "UPDATE blobs SET sha256 = (SELECT sha256 FROM blobs WHERE blob_id = ?) WHERE blob_id = ?", (b_id, a_id)
        )
    for m in (ma, mb):
        with pytest.raises(errors.SecurityError):
            bob.save_attachments(m.id, tmp_path / "out")
    assert no_decrypt == []
    _assert_nothing_left(tmp_path / "out")


@pytest.mark.parametrize("cut", [1, stream.TAG, SEG + stream.TAG, 2 * SEG])
def test_truncated_blob_is_rejected(pair, relay, tmp_path, no_decrypt, cut):
    """The relay serves a shorter blob, consistently (file and Content-Length)."""
    alice, bob = pair
    ma, _ = _two_equal_blobs(alice, bob, tmp_path)
    blob_id = ma.attachments[0].id
    path = blob_file(relay, blob_id)
    size = path.stat().st_size
    os.truncate(path, size - cut)
    with relay.db() as db:
        db.execute("UPDATE blobs SET size = ? WHERE blob_id = ?", (size - cut, blob_id))
    with pytest.raises(errors.SecurityError, match="integrity"):
        bob.save_attachments(ma.id, tmp_path / "out")
    assert no_decrypt == []
    _assert_nothing_left(tmp_path / "out")


@pytest.mark.parametrize("extra", [1, SEG + stream.TAG, 3 * MIB])
def test_appended_blob_is_rejected(pair, relay, tmp_path, no_decrypt, extra):
    alice, bob = pair
    ma, _ = _two_equal_blobs(alice, bob, tmp_path)
    blob_id = ma.attachments[0].id
    path = blob_file(relay, blob_id)
    size = path.stat().st_size
    with open(path, "ab") as fh:
        fh.write(data(extra, 9))
    with relay.db() as db:
        db.execute("UPDATE blobs SET size = ? WHERE blob_id = ?", (size + extra, blob_id))
    with pytest.raises(errors.SecurityError, match="integrity"):
        bob.save_attachments(ma.id, tmp_path / "out")
    assert no_decrypt == []
    _assert_nothing_left(tmp_path / "out")


def test_a_blob_file_cut_short_on_the_relays_disk_is_a_failed_transfer(pair, relay, tmp_path, no_decrypt):
    """The file alone cut short: the relay breaks the response off mid-body. To the client
    that is a dropped connection (exit 4, resumable), and nothing is decrypted or saved."""
    alice, bob = pair
    ma, _ = _two_equal_blobs(alice, bob, tmp_path)
    path = blob_file(relay, ma.attachments[0].id)
    os.truncate(path, path.stat().st_size - 100)
    out = tmp_path / "out"
    with pytest.raises((errors.RelayUnavailableError, errors.SecurityError)):
        bob.save_attachments(ma.id, out)
    assert no_decrypt == []
    assert [p for p in out.iterdir() if not p.name.startswith(".imsg-")] == []


def test_sender_with_a_wrong_key_is_caught_by_decryption_and_leaves_no_file(pair, relay, tmp_path, monkeypatch):
    """Digest and length match (the sender sent them), but the key is wrong: decryption
    fails at the first segment and no output file is left."""
    alice, bob = pair
    real = attachment_io.pointer
    monkeypatch.setattr(attachment_io, "pointer", lambda record: _with_zero_key(real(record)))
    sent = alice.send(BOB, attachments=[write(tmp_path / "src" / "x.bin", data(5000))])
    bob.receive()
    out = tmp_path / "out"
    with pytest.raises(errors.SecurityError, match="decrypt"):
        bob.save_attachments(sent.id, out)
    assert list(out.iterdir()) == []


def _with_zero_key(ptr):
    from dataclasses import replace

    return replace(ptr, key=bytes(32))


# --- resume ---


def test_interrupted_upload_resumes_without_resending_parts(pair, relay, tmp_path, monkeypatch):
    alice, bob = pair
    content = data(5 * PART + 1234, 4)  # 6 parts
    src = write(tmp_path / "src" / "big.bin", content)
    real = RelayClient.put_part
    sent_parts: list[int] = []

    def failing(self, blob_id, index, chunks, length):
        if len(sent_parts) == 3:
            for _ in chunks:  # read part of the body, then the connection "drops"
                break
            raise errors.RelayUnavailableError("connection dropped (test)")
        sent_parts.append(index)
        return real(self, blob_id, index, chunks, length)

    monkeypatch.setattr(RelayClient, "put_part", failing)
    with pytest.raises(errors.RelayUnavailableError):
        alice.send(BOB, "big one", attachments=[src])
    monkeypatch.setattr(RelayClient, "put_part", real)
    assert bob.receive() == []
    (record,) = [u for u in alice.store.uploads() if u.path == str(src.resolve())]
    blob_id = record.blob_id
    with relay.db() as db:
        held = [i for (i,) in db.execute("SELECT idx FROM blob_parts WHERE blob_id = ? ORDER BY idx", (blob_id,))]
    assert held == [0, 1, 2]
    before = list(relay.recorder.part_puts(blob_id))
    sent = alice.send(BOB, "big one", attachments=[src])
    after = relay.recorder.part_puts(blob_id)[len(before) :]
    assert sorted(after) == [3, 4, 5]  # no part the relay held was sent again
    (m,) = bob.receive()
    assert m.id == sent.id and m.attachments[0].id == blob_id
    (path,) = bob.save_attachments(m.id, tmp_path / "out")
    assert path.read_bytes() == content
    assert [u for u in alice.store.uploads() if u.path == str(src.resolve())] == []  # sent: record gone


def test_a_changed_file_is_uploaded_afresh(pair, relay, tmp_path, monkeypatch):
    """A resumable record only matches the same path, size and mtime."""
    alice, bob = pair
    src = write(tmp_path / "src" / "doc.bin", data(2 * PART, 1))
    real = RelayClient.put_part
    monkeypatch.setattr(
        RelayClient, "put_part", lambda *a, **k: (_ for _ in ()).throw(errors.RelayUnavailableError("down (test)"))
    )
    with pytest.raises(errors.RelayUnavailableError):
        alice.send(BOB, attachments=[src])
    monkeypatch.setattr(RelayClient, "put_part", real)
    new = data(2 * PART, 2)
    src.write_bytes(new)
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 10**9))
    sent = alice.send(BOB, attachments=[src])
    bob.receive()
    assert bob.save_attachments(sent.id, tmp_path / "out")[0].read_bytes() == new


def test_interrupted_download_resumes_with_a_range(pair, relay, tmp_path, monkeypatch):
    alice, bob = pair
    content = data(4 * PART + 99, 5)
    sent = alice.send(BOB, attachments=[write(tmp_path / "src" / "movie.mp4", content)])
    (m,) = bob.receive()
    blob_id = m.attachments[0].id
    real = AnonymousRelay.download_blob

    def dropping(self, blob_id, *, start=0):
        for n, chunk in enumerate(real(self, blob_id, start=start)):
            if n == 2:
                raise errors.RelayUnavailableError("connection dropped (test)")
            yield chunk

    monkeypatch.setattr(AnonymousRelay, "download_blob", dropping)
    out = tmp_path / "out"
    with pytest.raises(errors.RelayUnavailableError):
        bob.save_attachments(sent.id, out)
    temp = out / f".imsg-{blob_id}.part"
    assert [p.name for p in out.iterdir()] == [temp.name]
    have = temp.stat().st_size
    assert 0 < have < stream.ciphertext_length(len(content)) and mode(temp) == 0o600
    monkeypatch.setattr(AnonymousRelay, "download_blob", real)
    (path,) = bob.save_attachments(sent.id, out)
    assert path.read_bytes() == content
    assert relay.recorder.blob_gets()[-1] == (f"/v1/blobs/{blob_id}", f"bytes={have}-")
    assert sorted(p.name for p in out.iterdir()) == ["movie.mp4"]


def test_a_temp_file_of_wrong_bytes_is_caught_and_removed(pair, relay, tmp_path, no_decrypt):
    """A leftover temp file that is not a prefix of the blob fails the digest: removed, and
    the next save starts over and succeeds."""
    alice, bob = pair
    content = data(PART, 6)
    sent = alice.send(BOB, attachments=[write(tmp_path / "src" / "f.bin", content)])
    (m,) = bob.receive()
    out = tmp_path / "out"
    write(out / f".imsg-{m.attachments[0].id}.part", b"\x00" * 1000)
    with pytest.raises(errors.SecurityError):
        bob.save_attachments(sent.id, out)
    assert no_decrypt == [] and list(out.iterdir()) == []
    assert bob.save_attachments(sent.id, out)[0].read_bytes() == content


# --- expiry ---


def test_deleted_blob_is_a_clear_error_and_no_file(pair, relay, tmp_path):
    alice, bob = pair
    sent = alice.send(BOB, attachments=[write(tmp_path / "src" / "gone.txt", b"bye")])
    (m,) = bob.receive()
    alice.relay().delete_blob(m.attachments[0].id)
    assert not blob_file(relay, m.attachments[0].id).exists()
    with pytest.raises(errors.RelayRefusedError, match="no longer on the relay") as exc:
        bob.save_attachments(sent.id, tmp_path / "out")
    assert exc.value.exit_code == 5 and exc.value.status == 404
    _assert_nothing_left(tmp_path / "out")


def test_expired_blob_is_a_clear_error(pair, relay, tmp_path):
    """Past 30 days from upload every route answers 404 (before the sweeper runs)."""
    alice, bob = pair
    sent = alice.send(BOB, attachments=[write(tmp_path / "src" / "old.txt", b"old")])
    (m,) = bob.receive()
    with relay.db() as db:
        db.execute(
            "UPDATE blobs SET created_at = created_at - ? WHERE blob_id = ?",
            (30 * 86_400_000 + 1000, m.attachments[0].id),
        )
    with pytest.raises(errors.RelayRefusedError, match="no longer on the relay"):
        bob.save_attachments(sent.id, tmp_path / "out")
    _assert_nothing_left(tmp_path / "out")


def test_expired_draft_is_a_clear_error(pair, relay, tmp_path):
    alice, _ = pair
    d = alice.attach(write(tmp_path / "src" / "d.txt", b"d"))
    with alice.store.transaction():
        from dataclasses import replace

        alice.store.save_upload(replace(alice.store.get_upload(d.id), expires_at=1))
    assert alice.drafts() == []
    with pytest.raises(errors.LocalStateError, match="expired"):
        alice.send(BOB, drafts=[d.id])


def test_unknown_message_id(pair, tmp_path):
    _, bob = pair
    with pytest.raises(errors.LocalStateError, match="no message"):
        bob.save_attachments("ab" * 16, tmp_path / "out")
