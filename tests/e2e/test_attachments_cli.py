"""`imsg send --attach/--draft`, `imsg attach`, `imsg attachment save` and
`imsg receive --download` in real subprocesses (issue 4, SECURITY-TESTS 2 and 3).

The relay runs in this process (a thread, 1 MiB parts) behind a recording ASGI middleware
that can also slow part uploads and blob downloads down, so a test can SIGKILL `imsg`
mid-transfer at a known point and count, on the rerun, every PUT and every Range.

Exit codes: 0 ok, 2 usage, 3 local state, 4 relay unreachable, 5 relay refused, 6 security.
"""

from __future__ import annotations

import hashlib
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imsg.crypto import stream

from support.cli import assert_ok as ok
from support.cli import clean_env as _env
from support.cli import imsg_command, run_imsg
from support.cli import json_lines as lines
from support.recorder import Recorder
from support.relays import ThreadRelay, relay_settings, start_process_relay


def cmd(home: Path, *args: str, relay: str | None = None, json_mode: bool = True) -> list[str]:
    return imsg_command(home, *args, relay=relay, json_mode=json_mode)


def imsg(home: Path, *args: str, relay: str | None = None, json_mode: bool = True, timeout: float = 60):
    return run_imsg(home, *args, relay=relay, json_mode=json_mode, timeout=timeout)


KIB, MIB = 1024, 1024 * 1024
PART = 1 * MIB
BOB = "bob@example.com"


@pytest.fixture(scope="module")
def relay(tmp_path_factory):
    r = ThreadRelay(relay_settings(tmp_path_factory.mktemp("relay") / "data", blob_part_size=PART), wrap=Recorder)
    r.start()
    r.recorder = r.middleware
    try:
        yield r
    finally:
        r.stop()


def spawn(home: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        cmd(home, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        stdin=subprocess.DEVNULL,
    )


def json_error(r: subprocess.CompletedProcess, code: int) -> dict:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    errs = lines(r.stderr)
    assert errs and {"error", "message"} <= set(errs[-1]), r.stderr
    return errs[-1]


@pytest.fixture(scope="module")
def homes(relay, tmp_path_factory):
    base = tmp_path_factory.mktemp("homes")
    for name in ("alice", "bob"):
        ok(imsg(base / name, "init", f"{name}@example.com", "--name", name.capitalize(), relay=relay.url))
    return {"alice": base / "alice", "bob": base / "bob", "url": relay.url}


@pytest.fixture
def rec(relay, homes):
    """The relay's recorder, cleared, with no delays; nothing waiting for bob."""
    ok(imsg(homes["bob"], "receive"))
    relay.recorder.clear()
    relay.recorder.put_delay = relay.recorder.get_chunk_delay = 0.0
    yield relay.recorder
    relay.recorder.put_delay = relay.recorder.get_chunk_delay = 0.0


def data(n: int, seed: int = 0) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(b"%d/%d" % (seed, counter)).digest() * 64
        counter += 1
    return bytes(out[:n])


def write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def blob_file(relay, blob_id: str) -> Path:
    return relay.data_dir / "blobs" / blob_id[:2] / blob_id


def wait_for(predicate, timeout: float = 20, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


# --- send, receive, save ---


def test_send_attach_receive_then_save(homes, rec, tmp_path):
    files = {"notes.txt": b"some notes\n", "photo.jpg": data(PART + 3, 1)}
    paths = [write(tmp_path / "src" / n, c) for n, c in files.items()]
    (sent,) = ok(imsg(homes["alice"], "send", BOB, "look", "--attach", str(paths[0]), "--attach", str(paths[1])))
    assert sent["to"] == BOB
    (row,) = ok(imsg(homes["bob"], "receive"))
    assert (row["id"], row["text"]) == (sent["id"], "look")
    assert [{k: a[k] for k in ("name", "size", "type")} for a in row["attachments"]] == [
        {"name": "notes.txt", "size": 11, "type": "text/plain"},
        {"name": "photo.jpg", "size": PART + 3, "type": "image/jpeg"},
    ]
    assert all(set(a) == {"id", "name", "size", "type"} for a in row["attachments"])
    assert rec.blob_gets() == []  # recorded, not downloaded
    out = tmp_path / "out"
    saved = ok(imsg(homes["bob"], "attachment", "save", sent["id"], "--out", str(out)))
    assert saved == [{"message_id": sent["id"], "path": str(out / n)} for n in files]
    for n, c in files.items():
        assert (out / n).read_bytes() == c and mode(out / n) == 0o600
    assert sorted(p.name for p in out.iterdir()) == sorted(files)
    # history shows where they were saved
    hist = ok(imsg(homes["bob"], "history", "alice@example.com"))
    (mine,) = [h for h in hist if h["id"] == sent["id"]]
    assert [a["path"] for a in mine["attachments"]] == [str(out / n) for n in files]


def test_attachment_only_and_human_output_escapes_names(homes, rec, tmp_path):
    src = write(tmp_path / "src" / "in\u202ecod.exe", b"x")  # RTL override in a real file name
    r = imsg(homes["alice"], "send", BOB, "--attach", str(src), json_mode=False)
    assert r.returncode == 0, r.stderr
    r = imsg(homes["bob"], "receive", json_mode=False)
    assert r.returncode == 0, r.stderr
    assert "\u202e" not in r.stdout and "in\\u202ecod.exe" in r.stdout  # shown escaped
    (row,) = [
        h
        for h in ok(imsg(homes["bob"], "history", "alice@example.com"))
        if h["attachments"] and h["attachments"][0]["name"] == "in\u202ecod.exe"
    ]
    (saved,) = ok(imsg(homes["bob"], "attachment", "save", row["id"], "--out", str(tmp_path / "out")))
    assert Path(saved["path"]).name == "incod.exe"


def test_receive_download(homes, rec, tmp_path):
    content = data(2 * PART + 1, 2)
    srcs = [write(tmp_path / "src" / "a.bin", content), write(tmp_path / "src" / "b.bin", b"b")]
    (s1,) = ok(imsg(homes["alice"], "send", BOB, "one", "--attach", str(srcs[0])))
    (s2,) = ok(imsg(homes["alice"], "send", BOB, "two"))
    (s3,) = ok(imsg(homes["alice"], "send", BOB, "--attach", str(srcs[1])))
    out = tmp_path / "dl"
    rows = ok(imsg(homes["bob"], "receive", "--download", str(out)))
    assert [r["id"] for r in rows] == [s1["id"], s2["id"], s3["id"]]
    assert rows[0]["attachments"][0]["path"] == str(out / "a.bin")
    assert rows[1]["attachments"] == []
    assert rows[2]["attachments"][0]["path"] == str(out / "b.bin")
    assert (out / "a.bin").read_bytes() == content and (out / "b.bin").read_bytes() == b"b"
    assert mode(out / "a.bin") == 0o600
    assert sorted(p.name for p in out.iterdir()) == ["a.bin", "b.bin"]


def test_attach_draft_then_send(homes, rec, tmp_path):
    content = data(PART + 7, 3)
    (d,) = ok(imsg(homes["alice"], "attach", str(write(tmp_path / "src" / "draft.pdf", content))))
    assert (d["name"], d["size"], d["type"]) == ("draft.pdf", PART + 7, "application/pdf") and d["expires_at"]
    puts = len(rec.part_puts(d["id"]))
    assert puts == 2
    err = json_error(imsg(homes["alice"], "send", BOB, "--draft", "f" * 32), 3)
    assert "no draft attachment" in err["message"]
    (sent,) = ok(imsg(homes["alice"], "send", BOB, "the draft", "--draft", d["id"]))
    assert len(rec.part_puts(d["id"])) == puts  # sent without uploading again
    (row,) = ok(imsg(homes["bob"], "receive", "--download", str(tmp_path / "out")))
    assert row["id"] == sent["id"] and row["attachments"][0]["id"] == d["id"]
    assert Path(row["attachments"][0]["path"]).read_bytes() == content


def test_missing_file_is_a_usage_error(homes, rec, tmp_path):
    err = json_error(imsg(homes["alice"], "send", BOB, "--attach", str(tmp_path / "nope")), 2)
    assert "cannot read" in err["message"]


# --- a malicious or forgetful relay ---


def test_attachment_save_of_a_swapped_blob_exits_6(homes, rec, relay, tmp_path):
    n = 3 * stream.SEGMENT + 5
    (a,) = ok(imsg(homes["alice"], "send", BOB, "--attach", str(write(tmp_path / "src" / "a.bin", data(n, 4)))))
    (b,) = ok(imsg(homes["alice"], "send", BOB, "--attach", str(write(tmp_path / "src" / "b.bin", data(n, 5)))))
    ra, rb = ok(imsg(homes["bob"], "receive"))
    shutil.copyfile(blob_file(relay, rb["attachments"][0]["id"]), blob_file(relay, ra["attachments"][0]["id"]))
    out = tmp_path / "out"
    err = json_error(imsg(homes["bob"], "attachment", "save", a["id"], "--out", str(out)), 6)
    assert "integrity" in err["message"]
    assert list(out.iterdir()) == []  # no output file, no temp file
    ok(imsg(homes["bob"], "attachment", "save", b["id"], "--out", str(out)))
    assert (out / "b.bin").read_bytes() == data(n, 5)


def test_attachment_save_of_a_purged_blob_exits_5(homes, rec, relay, tmp_path):
    (s,) = ok(imsg(homes["alice"], "send", BOB, "--attach", str(write(tmp_path / "src" / "old.txt", b"old"))))
    (row,) = ok(imsg(homes["bob"], "receive"))
    blob_id = row["attachments"][0]["id"]
    with relay.db() as db:  # 30 days and a second later: gone for every route
        db.execute("UPDATE blobs SET created_at = created_at - ? WHERE blob_id = ?", (30 * 86_400_000 + 1000, blob_id))
    out = tmp_path / "out"
    err = json_error(imsg(homes["bob"], "attachment", "save", s["id"], "--out", str(out)), 5)
    assert "no longer on the relay" in err["message"]
    assert not out.exists() or list(out.iterdir()) == []


# --- resume ---


def _newest_blob(relay) -> str | None:
    with relay.db() as db:
        row = db.execute("SELECT blob_id FROM blobs ORDER BY created_at DESC, rowid DESC LIMIT 1").fetchone()
    return row[0] if row else None


def _held(relay, blob_id: str) -> list[int]:
    with relay.db() as db:
        return [i for (i,) in db.execute("SELECT idx FROM blob_parts WHERE blob_id = ? ORDER BY idx", (blob_id,))]


def test_upload_resumes_after_sigkill_without_resending_parts(homes, rec, relay, tmp_path):
    content = data(8 * PART, 6)
    src = write(tmp_path / "src" / "big.bin", content)
    total = -(-stream.ciphertext_length(len(content)) // PART)  # 9 parts
    before = _newest_blob(relay)
    rec.put_delay = 0.1
    proc = spawn(homes["alice"], "send", BOB, "big one", "--attach", str(src))
    try:
        blob_id = wait_for(lambda: (b := _newest_blob(relay)) != before and b, what="the blob")
        wait_for(lambda: len(_held(relay, blob_id)) >= 3, what="three parts")
        proc.kill()
    finally:
        kill(proc)
    assert proc.returncode == -9
    time.sleep(0.5)  # a part whose body had fully arrived may still be committed: let it
    held = _held(relay, blob_id)
    assert 3 <= len(held) < total
    rec.put_delay = 0.0
    rec.clear()
    (sent,) = ok(imsg(homes["alice"], "send", BOB, "big one", "--attach", str(src)))
    again = rec.part_puts(blob_id)
    assert sorted(again) == sorted(set(range(total)) - set(held))  # each missing part once, no held one
    assert _newest_blob(relay) == blob_id  # the same blob, not a second upload
    rows = ok(imsg(homes["bob"], "receive", "--download", str(tmp_path / "out")))
    assert [(r["id"], r["text"]) for r in rows] == [(sent["id"], "big one")]  # exactly one message
    assert [a["id"] for a in rows[0]["attachments"]] == [blob_id]
    assert (tmp_path / "out" / "big.bin").read_bytes() == content


def test_download_resumes_after_sigkill_with_a_range(homes, rec, relay, tmp_path):
    content = data(6 * PART, 7)
    (s,) = ok(imsg(homes["alice"], "send", BOB, "--attach", str(write(tmp_path / "src" / "film.mkv", content))))
    (row,) = ok(imsg(homes["bob"], "receive"))
    blob_id = row["attachments"][0]["id"]
    out = tmp_path / "out"
    temp = out / f".imsg-{blob_id}.part"
    rec.get_chunk_delay = 0.1
    proc = spawn(homes["bob"], "attachment", "save", s["id"], "--out", str(out))
    try:
        wait_for(lambda: temp.exists() and temp.stat().st_size >= 2 * MIB, what="2 MiB downloaded")
        proc.kill()
    finally:
        kill(proc)
    have = temp.stat().st_size
    assert 2 * MIB <= have < stream.ciphertext_length(len(content))
    assert [p.name for p in out.iterdir()] == [temp.name] and mode(temp) == 0o600
    rec.get_chunk_delay = 0.0
    rec.clear()
    (saved,) = ok(imsg(homes["bob"], "attachment", "save", s["id"], "--out", str(out)))
    assert saved["path"] == str(out / "film.mkv")
    assert (out / "film.mkv").read_bytes() == content
    assert rec.blob_gets() == [(f"/v1/blobs/{blob_id}", f"bytes={have}-")]
    assert sorted(p.name for p in out.iterdir()) == ["film.mkv"]


# --- memory ---


@pytest.fixture(scope="module")
def big_relay(tmp_path_factory):
    """`imsg-relay serve` as a subprocess, as users run it, with the default part size
    (8 MiB) and room for a 512 MiB blob; two accounts on it."""
    base = tmp_path_factory.mktemp("big-relay")
    r = start_process_relay(
        base / "data",
        base / "relay.log",
        env={"IMSG_RELAY_MAX_BLOB": str(1024 * MIB), "IMSG_RELAY_BLOB_QUOTA": str(4096 * MIB)},
    )
    try:
        for name in ("mel", "nat"):
            ok(imsg(base / name, "init", f"{name}@example.com", relay=r.url))
        yield {"alice": base / "mel", "bob": base / "nat", "url": r.url}
    finally:
        r.stop()


# ru_maxrss of a child forked straight from pytest counts pytest's own pages too (the
# high-water mark of the image it had before exec: ~90 MiB here, whatever imsg does), so a
# small launcher runs imsg and reports its child's peak on stderr's last line.
_LAUNCH = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.call(sys.argv[1:])\n"
    "print('maxrss_kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def _peak_rss_of_send(home: Path, path: Path) -> tuple[int, float]:
    """(peak RSS in bytes, seconds) of the whole `imsg send nat --attach PATH` process."""
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-c", _LAUNCH, *cmd(home, "send", "nat@example.com", "--attach", str(path))],
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(),
        stdin=subprocess.DEVNULL,
    )
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, (r.stdout, r.stderr)
    tag, kib = r.stderr.strip().splitlines()[-1].split()
    assert tag == "maxrss_kib"
    return int(kib) * 1024, elapsed


def _sparse(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.truncate(size)
    return path


def _check_memory(homes, tmp_path, small_mib: int, big_mib: int) -> None:
    small = _sparse(tmp_path / "src" / "small.bin", small_mib * MIB)
    big = _sparse(tmp_path / "src" / "big.bin", big_mib * MIB)
    rss_small, t_small = _peak_rss_of_send(homes["alice"], small)
    rss_big, t_big = _peak_rss_of_send(homes["alice"], big)
    ok(imsg(homes["bob"], "receive"))
    ratio = rss_big / rss_small
    report = (
        f"peak RSS of imsg send --attach: {small_mib} MiB file {rss_small / MIB:.1f} MiB "
        f"({t_small:.1f} s), {big_mib} MiB file {rss_big / MIB:.1f} MiB ({t_big:.1f} s), "
        f"ratio {ratio:.2f}"
    )
    print(report)
    assert ratio < 1.3, report
    assert rss_big < 64 * MIB, report


def test_peak_memory_does_not_grow_with_file_size(big_relay, tmp_path):
    """8 MiB vs 64 MiB in the default run; 64 MiB vs 512 MiB is the slow one below."""
    _check_memory(big_relay, tmp_path, 8, 64)


@pytest.mark.slow
def test_peak_memory_64_vs_512_mib(big_relay, tmp_path):
    _check_memory(big_relay, tmp_path, 64, 512)
