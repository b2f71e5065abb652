"""Passcode-locked homes (imsg/store/vault.py): nothing readable on disk, wrong passcodes
change nothing and wait longer each time, set/change/remove round trips, interrupted
changes recover, the unlock agent and the (file-backed, real) keyring.

Argon2id runs with small parameters here (passed through, as stored in the key file);
the KDF itself is checked against RFC 9106 in test_kat_argon2id.py and the e2e tests use
the real defaults.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imsg import errors
from imsg.protocol.stores import Contact, LocalAccount, StoredAttachment, StoredMessage, Upload
from imsg.store import vault, vault_agent
from imsg.store.runtime import FailureCounter, _private_dir, failure_delay, runtime_dir

FAST = {"memory_kib": 1024, "iterations": 1, "lanes": 1}
TEXT = "the eagle lands at midnight"
HANDLE = "carol.secret@example.com"
ACCOUNT_PRIVATE = bytes(range(1, 33))
PROFILE_KEY = bytes(range(101, 133))


@pytest.fixture(autouse=True)
def runtime(monkeypatch) -> Iterator[Path]:
    """A private runtime dir of this test's own, directly under the temp dir: the agent's
    socket path must fit a Unix socket's 107 bytes, and pytest-xdist's tmp_path (one level
    deeper per worker) plus the test's name does not always leave room."""
    run = Path(tempfile.mkdtemp(prefix="imsg-run-"))  # 0700
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    yield run
    shutil.rmtree(run, ignore_errors=True)


def _fill(home: Path) -> None:
    """A home holding one of everything sensitive (keys, contact, message, attachment, upload)."""
    from imsg.store.sqlite import SQLiteStore

    s = SQLiteStore(home / vault.STORE_FILE)
    with s.transaction():
        s.save_account(
            LocalAccount(
                "a" * 32,
                "me.secret@example.com",
                "Me",
                b"P" * 32,
                ACCOUNT_PRIVATE,
                1,
                b"I" * 32,
                b"S" * 32,
                b"D" * 64,
                "http://127.0.0.1:1",
                "tok-secret",
                1,
                PROFILE_KEY,
            )
        )
        s.save_contact(Contact("c" * 32, HANDLE, b"K" * 32, b"L" * 10, False, 1))
        s.add_message(StoredMessage("m" * 32, "c" * 32, HANDLE, "in", HANDLE, "me.secret@example.com", TEXT, 1, 1, 1))
        s.add_attachments(
            [StoredAttachment("m" * 32, 0, "b" * 32, b"A" * 32, b"G" * 32, 100, "holiday.jpg", "image/jpeg")]
        )
        s.save_upload(Upload("u" * 32, "/home/me/diary.txt", 5, 6, b"U" * 32, 50, 10, "diary.txt", "text/plain", 1, 2))
        s.set_setting("retention", "30d")
    s.close()


PLAINTEXTS = [
    TEXT.encode(),
    HANDLE.encode(),
    b"me.secret@example.com",
    b"holiday.jpg",
    b"diary.txt",
    b"tok-secret",
    ACCOUNT_PRIVATE,
    PROFILE_KEY,
    b"SQLite format 3",
]


def _leaks(home: Path, extra: list[bytes] = ()) -> list[str]:
    """Every (file, needle) where a known plaintext or key appears in the home, as raw
    bytes or hex, in any file (database, -wal, -shm, key file, lock)."""
    found = []
    for path in home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for needle in [*PLAINTEXTS, *extra]:
                if needle in data or (len(needle) == 32 and needle.hex().encode() in data):
                    found.append(f"{path.name}: {needle[:20]!r}")
    return found


def _snapshot(home: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(home.iterdir())}


def _read_back(store) -> tuple:
    return (
        store.load_account().account_private,
        store.contact_by_handle(HANDLE).handle,
        store.history("c" * 32, 10)[0].text,
        store.get_setting("retention"),
    )


def test_set_passcode_leaves_nothing_readable_and_opens_with_it(tmp_path: Path):
    home = tmp_path / "home"
    _fill(home)
    assert _leaks(home)  # the test can see plaintext when it is there
    vault.set_passcode(home, "correct horse", **FAST)
    assert sorted(p.name for p in home.iterdir()) == ["imsg.db", "lock", "storage-key"]
    assert _leaks(home) == []
    assert stat.S_IMODE((home / "storage-key").stat().st_mode) == 0o600

    store = vault.open_store(home, vault.KeySource(passcode="correct horse"))
    try:
        assert _read_back(store) == (ACCOUNT_PRIVATE, HANDLE, TEXT, "30d")
        with store.transaction():  # new writes sit in the WAL while the store is open
            store.add_message(
                StoredMessage(
                    "n" * 32, "c" * 32, HANDLE, "out", "me.secret@example.com", HANDLE, "a second secret line", 2, 2, 1
                )
            )
        assert (home / "imsg.db-wal").stat().st_size > 0
        storage_key = vault.current_key(home, vault.KeySource(passcode="correct horse"))
        assert _leaks(home, [b"a second secret line", storage_key]) == []
    finally:
        store.close()
    with pytest.raises(sqlite3.DatabaseError):  # not a SQLite file any more without the key
        sqlite3.connect(home / "imsg.db").execute("SELECT * FROM messages").fetchall()


def test_the_replaced_database_file_is_overwritten(tmp_path: Path):
    """A hard link keeps the old file's inode visible: after set, its bytes are zeros."""
    home = tmp_path / "home"
    _fill(home)
    os.link(home / "imsg.db", tmp_path / "old-inode")
    size = (tmp_path / "old-inode").stat().st_size
    vault.set_passcode(home, "correct horse", **FAST)
    assert (tmp_path / "old-inode").read_bytes() == b"\0" * size
    assert _leaks(home) == []


def test_wrong_passcode_changes_nothing_and_waits_longer_each_time(tmp_path: Path, runtime: Path):
    home = tmp_path / "home"
    _fill(home)
    vault.set_passcode(home, "correct horse", **FAST)
    before = _snapshot(home)
    slept: list[float] = []
    for _ in range(3):
        with pytest.raises(vault.WrongPasscodeError) as info:
            vault.open_store(home, vault.KeySource(passcode="wrong horse", sleep=slept.append))
        assert info.value.exit_code == 3 and info.value.code == "wrong_passcode"
    assert info.value.details["failures"] == 3
    # After each failure the wait doubles (1 s, 2 s, 4 s); before each attempt the rest of
    # the previous wait is still owed (nothing left here: the sleep was recorded, not slept,
    # so only positive leftovers appear between the failure sleeps).
    failure_sleeps = [s for s in slept if s in (1.0, 2.0, 4.0)]
    assert failure_sleeps == [1.0, 2.0, 4.0]
    assert _snapshot(home) == before  # byte-identical, same mtimes: nothing written
    assert list(runtime.joinpath("imsg").glob("failures-*.json"))  # the counter lives here
    store = vault.open_store(home, vault.KeySource(passcode="correct horse", sleep=slept.append))
    store.close()
    assert not list(runtime.joinpath("imsg").glob("failures-*.json"))  # reset on success


def test_failure_delay_schedule_and_owed_wait(tmp_path: Path):
    assert [failure_delay(n) for n in range(9)] == [0, 1, 2, 4, 8, 16, 32, 60, 60]
    now = [1000.0]
    slept: list[float] = []
    counter = FailureCounter(tmp_path, sleep=slept.append, clock=lambda: now[0])
    counter.failed()
    counter.failed()  # 2 failures at t=1000: 2 s owed
    slept.clear()
    now[0] = 1000.5
    FailureCounter(tmp_path, sleep=slept.append, clock=lambda: now[0]).wait_turn()  # a new process
    assert slept == [1.5]


def test_locked_home_without_a_passcode_source_fails_fast(tmp_path: Path):
    home = tmp_path / "home"
    _fill(home)
    vault.set_passcode(home, "correct horse", **FAST)
    before = _snapshot(home)
    t0 = time.monotonic()
    with pytest.raises(vault.LockedError) as info:
        vault.open_store(home, vault.KeySource())
    assert info.value.exit_code == 3 and "imsg unlock" in info.value.hint
    assert time.monotonic() - t0 < 2 and _snapshot(home) == before


def test_change_passcode_rekeys_under_a_new_storage_key(tmp_path: Path):
    home = tmp_path / "home"
    _fill(home)
    vault.set_passcode(home, "first passcode", **FAST)
    old_keyfile = (home / "storage-key").read_bytes()
    old_key = vault.current_key(home, vault.KeySource(passcode="first passcode"))
    vault.change_passcode(home, old_key, "second passcode", **FAST)
    with pytest.raises(vault.WrongPasscodeError):
        vault.open_store(home, vault.KeySource(passcode="first passcode", sleep=lambda s: None))
    store = vault.open_store(home, vault.KeySource(passcode="second passcode"))
    try:
        assert _read_back(store) == (ACCOUNT_PRIVATE, HANDLE, TEXT, "30d")
    finally:
        store.close()
    new_key = vault.current_key(home, vault.KeySource(passcode="second passcode"))
    assert new_key != old_key
    # An old copy of the key file with the old passcode unwraps the OLD key, which opens nothing now.
    assert vault.unwrap(vault.KeyFile.loads(old_keyfile), "first passcode") == old_key
    from imsg.store.sqlite import SQLiteStore

    with pytest.raises(Exception):
        SQLiteStore(home / "imsg.db", key=old_key)
    assert _leaks(home, [old_key, new_key]) == []
    assert sorted(p.name for p in home.iterdir()) == ["imsg.db", "lock", "storage-key"]


def test_remove_passcode_gives_back_a_plain_home(tmp_path: Path):
    home = tmp_path / "home"
    _fill(home)
    vault.set_passcode(home, "correct horse", **FAST)
    vault.remove_passcode(home, vault.current_key(home, vault.KeySource(passcode="correct horse")))
    assert not (home / "storage-key").exists()
    assert sqlite3.connect(home / "imsg.db").execute("SELECT text FROM messages").fetchall() == [(TEXT,)]
    store = vault.open_store(home)  # no key source needed any more
    try:
        assert _read_back(store) == (ACCOUNT_PRIVATE, HANDLE, TEXT, "30d")
    finally:
        store.close()
    with pytest.raises(errors.LocalStateError):
        vault.remove_passcode(home, b"\0" * 32)


def test_set_passcode_on_a_new_home_and_twice(tmp_path: Path):
    home = tmp_path / "fresh"
    vault.set_passcode(home, "abcd", **FAST)
    vault.open_store(home, vault.KeySource(passcode="abcd")).close()
    with pytest.raises(errors.LocalStateError):
        vault.set_passcode(home, "efgh", **FAST)
    with pytest.raises(errors.UsageError):
        vault.set_passcode(tmp_path / "other", "abc", **FAST)  # too short
    assert not (tmp_path / "other" / "storage-key").exists()


def test_reencrypting_refuses_while_another_process_has_the_home_open(tmp_path: Path):
    home = tmp_path / "home"
    _fill(home)
    store = vault.open_store(home)
    try:
        with pytest.raises(vault.HomeBusyError) as info:
            vault.set_passcode(home, "correct horse", **FAST)
        assert info.value.exit_code == 3
        assert not (home / "storage-key").exists() and _read_back(store)[2] == TEXT
    finally:
        store.close()


def test_interrupted_change_after_the_commit_point_finishes(tmp_path: Path):
    """A crash between the database rename and the key file rename: the key file whose
    db_salt matches the database wins."""
    home = tmp_path / "home"
    _fill(home)
    vault.set_passcode(home, "first passcode", **FAST)
    old_keyfile = (home / "storage-key").read_bytes()
    vault.change_passcode(
        home, vault.current_key(home, vault.KeySource(passcode="first passcode")), "second passcode", **FAST
    )
    os.replace(home / "storage-key", home / "storage-key.next")
    (home / "storage-key").write_bytes(old_keyfile)
    store = vault.open_store(home, vault.KeySource(passcode="second passcode"))
    store.close()
    assert not (home / "storage-key.next").exists()


def test_interrupted_change_before_the_commit_point_is_discarded(tmp_path: Path):
    home = tmp_path / "home"
    _fill(home)
    vault.set_passcode(home, "first passcode", **FAST)
    other = tmp_path / "other"
    _fill(other)
    vault.set_passcode(other, "second passcode", **FAST)  # a half-made copy and its key file
    shutil.copy(other / "imsg.db", home / "imsg.db.rekey")
    shutil.copy(other / "storage-key", home / "storage-key.next")
    store = vault.open_store(home, vault.KeySource(passcode="first passcode"))
    try:
        assert _read_back(store)[2] == TEXT
    finally:
        store.close()
    assert sorted(p.name for p in home.iterdir()) == ["imsg.db", "lock", "storage-key"]


def test_key_file_tampering_is_refused(tmp_path: Path):
    home = tmp_path / "home"
    vault.set_passcode(home, "correct horse", **FAST)
    import json

    doc = json.loads((home / "storage-key").read_bytes())
    weaker = dict(doc, t=doc["t"] + 1)  # parameters are authenticated: changed -> no unwrap
    with pytest.raises(vault.WrongPasscodeError):
        vault.unwrap(vault.KeyFile.loads(json.dumps(weaker).encode()), "correct horse")
    for bad in (dict(doc, m=1 << 40), dict(doc, t=0), dict(doc, salt="AAAA"), dict(doc, format="x"), {}, []):
        with pytest.raises(errors.LocalStateError):
            vault.KeyFile.loads(json.dumps(bad).encode())
    with pytest.raises(errors.LocalStateError):
        vault.KeyFile.loads(b"\xff not json")


def test_unlock_agent_serves_the_key_until_locked(tmp_path: Path, runtime: Path):
    home = tmp_path / "home"
    _fill(home)
    vault.set_passcode(home, "correct horse", **FAST)
    key = vault.current_key(home, vault.KeySource(passcode="correct horse"))
    vault_agent.start(home, key, int((time.time() + 60) * 1000))
    try:
        sock = vault_agent.socket_path(home)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600 and stat.S_ISSOCK(sock.stat().st_mode)
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        keys = vault.KeySource()
        store = vault.open_store(home, keys)
        assert keys.from_agent and _read_back(store)[2] == TEXT
        store.close()
        assert _leaks(home, [key]) == [] and _leaks(runtime, [key]) == []  # the key is in memory only
    finally:
        assert vault_agent.stop(home)
    assert not vault_agent.socket_path(home).exists()
    with pytest.raises(vault.LockedError):
        vault.open_store(home, vault.KeySource())


def test_unlock_agent_does_not_inherit_the_passcode(tmp_path: Path, monkeypatch):
    home = tmp_path / "home"
    vault.set_passcode(home, "correct horse", **FAST)
    monkeypatch.setenv("IMSG_PASSCODE", "correct horse")
    key = vault.current_key(home, vault.KeySource.from_environment(interactive=False))
    vault_agent.start(home, key, int((time.time() + 60) * 1000))
    try:
        pids = subprocess.run(
            ["pgrep", "-f", str(vault_agent.socket_path(home))], capture_output=True, text=True
        ).stdout.split()
        assert len(pids) == 1
        if os.getuid() != 0:  # non-dumpable: /proc/PID/environ belongs to root now; we cannot even read it
            with pytest.raises(PermissionError):
                Path(f"/proc/{pids[0]}/environ").read_bytes()
        else:
            assert b"IMSG_PASSCODE" not in Path(f"/proc/{pids[0]}/environ").read_bytes()
    finally:
        vault_agent.stop(home)


def test_unlock_agent_exits_at_its_deadline(tmp_path: Path):
    home = tmp_path / "home"
    vault.set_passcode(home, "correct horse", **FAST)
    key = vault.current_key(home, vault.KeySource(passcode="correct horse"))
    vault_agent.start(home, key, int((time.time() + 1.0) * 1000))
    assert vault_agent.fetch_key(home) == key
    deadline = time.monotonic() + 10
    while vault_agent.socket_path(home).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not vault_agent.socket_path(home).exists() and vault_agent.fetch_key(home) is None


def test_an_agent_with_a_stale_key_is_not_used(tmp_path: Path):
    home = tmp_path / "home"
    vault.set_passcode(home, "correct horse", **FAST)
    vault_agent.start(home, b"\x07" * 32, int((time.time() + 60) * 1000))
    try:
        with pytest.raises(vault.LockedError):
            vault.open_store(home, vault.KeySource())
    finally:
        vault_agent.stop(home)


def test_unlock_agent_socket_path_limit_is_exact(tmp_path: Path, runtime: Path, monkeypatch):
    """A socket path of exactly MAX_SOCKET_PATH bytes works; one byte more is refused before
    anything starts, with an error that names the path and says what to do."""
    home = tmp_path / "home"
    vault.set_passcode(home, "correct horse", **FAST)
    key = vault.current_key(home, vault.KeySource(passcode="correct horse"))
    suffix = len(str(vault_agent.socket_path(home))) - len(str(runtime))  # "/imsg/agent-<id>.sock"
    for extra in (0, 1):
        run = runtime / ("r" * (vault_agent.MAX_SOCKET_PATH - suffix - len(str(runtime)) - 1 + extra))
        run.mkdir(mode=0o700)
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
        sock = vault_agent.socket_path(home)
        assert len(os.fsencode(sock)) == vault_agent.MAX_SOCKET_PATH + extra
        if not extra:
            vault_agent.start(home, key, int((time.time() + 60) * 1000))
            try:
                assert vault_agent.fetch_key(home) == key
            finally:
                assert vault_agent.stop(home)
            continue
        with pytest.raises(errors.LocalStateError) as info:
            vault_agent.start(home, key, int((time.time() + 60) * 1000))
        assert str(sock) in str(info.value) and f"{vault_agent.MAX_SOCKET_PATH + 1} bytes" in str(info.value)
        assert "XDG_RUNTIME_DIR" in info.value.hint and info.value.exit_code == 3
        assert not sock.exists()
        assert subprocess.run(["pgrep", "-f", str(sock)], capture_output=True).returncode == 1  # none started


def test_unlock_agent_that_cannot_start_says_why(tmp_path: Path):
    """The agent's own stderr reaches the error: here its socket's name is taken by a directory."""
    home = tmp_path / "home"
    vault.set_passcode(home, "correct horse", **FAST)
    key = vault.current_key(home, vault.KeySource(passcode="correct horse"))
    sock = vault_agent.socket_path(home)
    sock.mkdir()
    with pytest.raises(errors.LocalStateError) as info:
        vault_agent.start(home, key, int((time.time() + 60) * 1000))
    message = str(info.value)
    assert message.startswith("the unlock agent did not start (exit status 1): imsg unlock agent: cannot listen on")
    assert str(sock) in message and "Is a directory" in message
    assert sock.is_dir() and vault_agent.fetch_key(home) is None


def test_keyring_opt_in_with_a_file_backed_keyring(tmp_path: Path, monkeypatch):
    import keyring
    from keyrings.alt.file import PlaintextKeyring

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    previous = keyring.get_keyring()
    keyring.set_keyring(PlaintextKeyring())
    try:
        home = tmp_path / "home"
        _fill(home)
        vault.set_passcode(home, "correct horse", keyring=True, **FAST)
        store = vault.open_store(home, vault.KeySource())  # no passcode: the keyring has the key
        assert _read_back(store)[2] == TEXT
        store.close()
        key = vault.current_key(home, vault.KeySource())
        assert next((tmp_path / "data").rglob("keyring_pass.cfg")).stat().st_size > 0

        def in_file() -> str | None:  # a fresh backend object: read back from its file
            return PlaintextKeyring().get_password("imsg", vault._keyring_user(home))

        assert in_file() == key.hex()
        vault.change_passcode(home, key, "another passcode", **FAST)  # stays opted in, new key
        new = vault.current_key(home, vault.KeySource())
        assert new != key and in_file() == new.hex()
        vault.remove_passcode(home, new)
        assert in_file() is None
    finally:
        keyring.set_keyring(previous)


def test_runtime_dir_must_be_private(tmp_path: Path, runtime: Path, monkeypatch):
    assert runtime_dir() == runtime / "imsg"
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    assert not _private_dir(shared, os.getuid(), create=False)
    link = tmp_path / "link"
    link.symlink_to(runtime)
    assert not _private_dir(link, os.getuid(), create=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(shared))  # not private: fall back to <tmp>/imsg-<uid>
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)
    assert runtime_dir() == tmp_path / "tmp" / f"imsg-{os.getuid()}"


def test_passcode_file_first_line_and_permissions(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("IMSG_PASSCODE", raising=False)
    path = tmp_path / "pc"
    path.write_text("line one passcode\nsecond line\n")
    path.chmod(0o600)
    assert vault.KeySource.from_environment(str(path), interactive=False).passcode == "line one passcode"
    path.chmod(0o640)
    with pytest.raises(errors.UsageError) as info:
        vault.read_passcode_file(str(path))
    assert "chmod 600" in info.value.hint
    with pytest.raises(errors.UsageError):
        vault.read_passcode_file(str(tmp_path / "missing"))
    monkeypatch.setenv("IMSG_PASSCODE", "from the environment")
    assert vault.KeySource.from_environment(str(path), interactive=False).passcode == "from the environment"


def test_a_database_that_does_not_match_the_key_file_is_a_clear_error(tmp_path: Path):
    home, other = tmp_path / "home", tmp_path / "other"
    for h in (home, other):
        _fill(h)
        vault.set_passcode(h, "correct horse", **FAST)
    shutil.copy(other / "imsg.db", home / "imsg.db")  # a database from elsewhere, same passcode
    before = _snapshot(home)
    with pytest.raises(errors.LocalStateError) as info:
        vault.open_store(home, vault.KeySource(passcode="correct horse"))
    assert "does not match" in str(info.value) and info.value.exit_code == 3
    assert {k: v[0] for k, v in _snapshot(home).items()} == {k: v[0] for k, v in before.items()}
