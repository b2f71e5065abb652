"""A home's store, opened with or without a passcode (encryption at rest).

Without a passcode a home is what it always was: `imsg.db`, plain SQLite. With one:

- a random 32-byte **storage key** encrypts the whole database with SQLCipher 4 (every
  page of the main file and of its WAL: AES-256-CBC with a random IV per page and an
  HMAC-SHA512 over each page; the `-shm` index holds page numbers, no content);
- `storage-key` (JSON, beside the database) holds that key wrapped: AES-256-GCM under a
  key derived from the passcode with Argon2id (RFC 9106), the Argon2id parameters and
  salt in the clear and authenticated as associated data, plus the database file's
  SQLCipher salt (its first 16 bytes) so an interrupted passcode change can tell which
  wrapped key belongs to which database file;
- changing the passcode re-encrypts the database under a NEW storage key
  (`sqlcipher_export` into a new file, then one rename), so an old copy of `storage-key`
  with an old passcode opens nothing current; removing it exports to plain SQLite the same
  way. The replaced file is overwritten with zeros before it is let go (best effort: see
  docs/STORAGE.md on journaling filesystems and SSDs).

`open_store(home, keys)` is the one way to open a home's store; `KeySource` says where the
passcode may come from (the unlock agent, the OS keyring if the user opted in,
`IMSG_PASSCODE`, `--passcode-file`, or a terminal prompt). A wrong passcode modifies
nothing in the home: the failure counter lives in the runtime dir (imsg.store.runtime).

Every process that opens the store holds a shared `flock` on `lock` in the home for as
long as it has the store open; re-encrypting takes it exclusively, so it never swaps the
file under a running `imsg watch` (it asks the user to stop it instead).
"""

from __future__ import annotations

import fcntl
import hmac
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, Unpack

from imsg import errors
from imsg.store.keyfile import (
    KEY_FILE,
    Argon2Params,
    KeyFile,
    WrongPasscodeError,
    derive_kek,
    key_check,
    unwrap,
    wrap,
)

if TYPE_CHECKING:
    from imsg.store.sqlite import SQLiteStore  # imported when a store is opened: `imsg --help` stays fast

# What callers reach through the vault (the key file itself is keyfile.py's).
__all__ = [
    "HomeBusyError",
    "KeyFile",
    "KeySource",
    "LockedError",
    "WrongPasscodeError",
    "derive_kek",
    "open_store",
    "unwrap",
]

STORE_FILE = "imsg.db"
LOCK_FILE = "lock"
PLAIN_HEADER = b"SQLite format 3\x00"
MIN_PASSCODE_LEN = 4  # a phone's shortest; docs/STORAGE.md gives the guessing cost


class LockedError(errors.LocalStateError):
    """this home is locked with a passcode"""

    code = "locked"
    hint = (
        "unlock it for a while with: imsg unlock --for 15m; or give the passcode through "
        "IMSG_PASSCODE or --passcode-file"
    )


class HomeBusyError(errors.LocalStateError):
    """another imsg process has this home open"""

    code = "home_busy"
    hint = "stop it (e.g. imsg watch) and try again"


# --- where a passcode comes from ---


@dataclass
class KeySource:
    """Where `open_store` may look for the storage key, in this order: the unlock agent,
    the OS keyring (only if the user opted in), `passcode` (IMSG_PASSCODE or
    --passcode-file), a terminal prompt (only if `prompt` is set). None of them: LockedError."""

    passcode: str | None = None
    prompt: Callable[[str], str] | None = None
    use_agent: bool = True
    use_keyring: bool = True
    sleep: Callable[[float], None] | None = None  # the failure delay; tests may record it
    # Where a person at the prompt is told why they wait (a wrong passcode, the delay);
    # set with `prompt`, None for scripts.
    notice: Callable[[str], None] | None = None
    from_agent: bool = field(default=False, init=False)  # set when the agent supplied the key

    @classmethod
    def from_environment(cls, passcode_file: str | None = None, *, interactive: bool | None = None) -> KeySource:
        """IMSG_PASSCODE, then --passcode-file; a prompt only when stdin and stderr are a
        terminal (never in a script, which must not hang)."""
        passcode = os.environ.get("IMSG_PASSCODE") or None
        if passcode is None and passcode_file:
            passcode = read_passcode_file(passcode_file)
        if interactive is None:
            interactive = _isatty(sys.stdin) and _isatty(sys.stderr)
        return cls(
            passcode=passcode,
            prompt=_getpass if interactive else None,
            notice=_tell if interactive else None,
        )

    def passcode_only(self) -> KeySource:
        """This source without the agent and the keyring: for unlock, change and remove,
        which must prove knowledge of the passcode (an unlocked session must not be enough
        to set a passcode someone else knows, which would outlast `imsg lock`)."""
        return replace(self, use_agent=False, use_keyring=False)


def _isatty(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (ValueError, OSError):
        return False


def _tell(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _getpass(prompt: str) -> str:
    import getpass

    return getpass.getpass(prompt, stream=sys.stderr)


def read_passcode_file(path: str) -> str:
    """The first line of `path` (a trailing newline is not part of the passcode). Refused,
    like ssh refuses a private key, if other users may read it."""
    p = Path(path).expanduser()
    try:
        mode = p.stat().st_mode
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise errors.UsageError(f"cannot read passcode file {path}: {getattr(exc, 'strerror', exc)}") from None
    if mode & 0o077:
        raise errors.UsageError(f"passcode file {path} is readable by other users", hint=f"chmod 600 {path}")
    return text.splitlines()[0] if text else ""


# --- the home ---


def has_passcode(home: Path) -> bool:
    return (home / KEY_FILE).exists()


def read_keyfile(home: Path) -> KeyFile | None:
    try:
        return KeyFile.loads((home / KEY_FILE).read_bytes())
    except FileNotFoundError:
        return None


def _lock(home: Path, exclusive: bool) -> int:
    fd = os.open(home / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if exclusive:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits out a re-encryption in progress (seconds)
    except BlockingIOError:
        os.close(fd)
        raise HomeBusyError() from None
    return fd


def _recover(home: Path) -> None:
    """Finish or discard a passcode change/removal interrupted by a crash. The database
    rename is the commit point; the key file that matches the database's salt wins."""
    tmp = home / (STORE_FILE + ".rekey")
    nxt = home / (KEY_FILE + ".next")
    if not tmp.exists() and not nxt.exists():
        return
    tmp.unlink(missing_ok=True)  # not committed: the old database and key file stand
    db = home / STORE_FILE
    header = db.read_bytes()[:16] if db.exists() else b""
    if nxt.exists():
        try:
            new = KeyFile.loads(nxt.read_bytes())
        except errors.LocalStateError:
            new = None
        if new is not None and new.db_salt == header:
            os.replace(nxt, home / KEY_FILE)
        else:
            nxt.unlink(missing_ok=True)
    if header == PLAIN_HEADER:
        (home / KEY_FILE).unlink(missing_ok=True)  # an interrupted removal


def open_store(home: str | os.PathLike[str], keys: KeySource | None = None) -> SQLiteStore:
    """Open the store of `home` (created if new), unlocking it if it has a passcode.

    Raises LockedError when the home has a passcode and `keys` offers no way to get it,
    WrongPasscodeError (after the growing delay) on a wrong one; neither touches the home.
    """
    from imsg.store.sqlite import SQLiteStore

    home = Path(home).expanduser()
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = _lock(home, exclusive=False)
    try:
        _recover(home)
        kf = read_keyfile(home)
        if kf is None:
            return SQLiteStore(home / STORE_FILE, lock_fd=fd)
        key = storage_key(home, kf, keys or KeySource())
        return _open_encrypted(home, key, fd)
    except BaseException:
        os.close(fd)
        raise


def _open_encrypted(home: Path, key: bytes, fd: int) -> SQLiteStore:
    import sqlcipher3

    from imsg.store.sqlite import SQLiteStore

    try:
        return SQLiteStore(home / STORE_FILE, key=key, lock_fd=fd)
    except sqlcipher3.DatabaseError:
        # The key is right for `storage-key` (checked) but not for this database: one of the
        # two was replaced or damaged. Nothing was written.
        raise errors.LocalStateError(
            f"{STORE_FILE} does not match {KEY_FILE}: one of them was replaced or is damaged",
            hint="restore both from the same backup",
        ) from None


def storage_key(home: Path, kf: KeyFile, keys: KeySource) -> bytes:
    """The storage key of a passcode-protected home, from the first source that has it."""
    if keys.use_agent:
        from imsg.store import vault_agent

        key = vault_agent.fetch_key(home)
        if key is not None and hmac.compare_digest(key_check(key), kf.check):
            keys.from_agent = True
            return key
    if kf.keyring and keys.use_keyring:
        key = keyring_get(home)
        if key is not None and hmac.compare_digest(key_check(key), kf.check):
            return key
    if keys.passcode is not None:
        return _try_passcode(home, kf, keys.passcode, keys)
    if keys.prompt is not None:
        tries = 3
        for attempt in range(tries):
            try:
                return _try_passcode(home, kf, keys.prompt(f"passcode for {home}: "), keys, left=tries - attempt - 1)
            except WrongPasscodeError:
                if attempt == tries - 1:
                    raise
    raise LockedError()


def _try_passcode(home: Path, kf: KeyFile, passcode: str, keys: KeySource, left: int = 0) -> bytes:
    """Unwrap with `passcode`, after the delay earlier failures earned; a wrong one earns
    a longer delay. A person at the prompt (`keys.notice`) is told what they wait for."""
    from imsg.store.runtime import FailureCounter

    sleep = keys.sleep
    if sleep is None:
        import time

        sleep = time.sleep

    def announced(say: str) -> Callable[[float], None]:
        def wait(seconds: float) -> None:
            if keys.notice is not None and seconds >= 0.5:
                keys.notice(say.format(seconds=round(seconds)))
            sleep(seconds)

        return wait

    before = FailureCounter(home, sleep=announced("waiting {seconds} s first: wrong passcodes were tried just before"))
    before.wait_turn()
    try:
        key = unwrap(kf, passcode)
    except WrongPasscodeError:
        if keys.notice is not None:
            keys.notice(
                "wrong passcode"
                + (f" ({left} more {'try' if left == 1 else 'tries'})" if left else "")
                + "; each wrong try in a row makes the next wait longer (1, 2, 4 ... 60 s), against guessing"
            )
        after = FailureCounter(home, sleep=announced("waiting {seconds} s before the next try"))
        failures = after.failed()
        raise WrongPasscodeError(failures=failures) from None
    FailureCounter(home).succeeded()
    return key


# --- the OS keyring (opt-in) ---

_KEYRING_SERVICE = "imsg"


def _keyring_user(home: Path) -> str:
    from imsg.store.runtime import home_id

    return f"storage-key:{home_id(home)}"


def keyring_get(home: Path) -> bytes | None:
    import keyring
    from keyring.errors import KeyringError

    try:
        value = keyring.get_password(_KEYRING_SERVICE, _keyring_user(home))
    except KeyringError:
        return None
    try:
        key = bytes.fromhex(value) if value else None
    except ValueError:
        return None
    return key if key is not None and len(key) == 32 else None


def keyring_set(home: Path, key: bytes | None) -> None:
    import keyring
    from keyring.errors import KeyringError, PasswordDeleteError

    try:
        if key is None:
            try:
                keyring.delete_password(_KEYRING_SERVICE, _keyring_user(home))
            except PasswordDeleteError:
                pass
        else:
            keyring.set_password(_KEYRING_SERVICE, _keyring_user(home), key.hex())
    except KeyringError as exc:
        raise errors.LocalStateError(
            f"the OS keyring refused: {exc}", hint="set up a keyring, or leave out --keyring"
        ) from None


# --- setting, changing, removing the passcode ---


def check_new_passcode(passcode: str) -> str:
    if len(passcode) < MIN_PASSCODE_LEN:
        raise errors.UsageError(f"a passcode needs at least {MIN_PASSCODE_LEN} characters")
    return passcode


def set_passcode(
    home: str | os.PathLike[str],
    passcode: str,
    *,
    keyring: bool = False,
    rng: Callable[[int], bytes] = os.urandom,
    **argon2: Unpack[Argon2Params],
) -> None:
    """Encrypt a home that has no passcode yet."""
    home = Path(home).expanduser()
    refuse_if_set(home)
    _rewrite(home, None, (rng(32), check_new_passcode(passcode)), keyring=keyring, rng=rng, **argon2)


def refuse_if_set(home: Path) -> None:
    if has_passcode(home):
        raise errors.LocalStateError("this home already has a passcode", hint="change it with: imsg passcode change")


def current_key(home: str | os.PathLike[str], keys: KeySource) -> bytes:
    """The storage key of a home that has a passcode (LocalStateError if it has none)."""
    home = Path(home).expanduser()
    return storage_key(home, require_keyfile(home), keys)


def change_passcode(
    home: str | os.PathLike[str],
    old_key: bytes,
    new_passcode: str,
    *,
    keyring: bool | None = None,
    rng: Callable[[int], bytes] = os.urandom,
    **argon2: Unpack[Argon2Params],
) -> None:
    """Re-encrypt under a new storage key wrapped by the new passcode (`old_key` from
    current_key). If the home was unlocked, it stays unlocked under the new key."""
    from imsg.store import vault_agent

    home = Path(home).expanduser()
    kf = require_keyfile(home)
    unlocked_until = vault_agent.deadline(home)
    new = rng(32)
    _rewrite(
        home,
        old_key,
        (new, check_new_passcode(new_passcode)),
        keyring=kf.keyring if keyring is None else keyring,
        rng=rng,
        **argon2,
    )
    if kf.keyring and keyring is False:
        keyring_set(home, None)
    if unlocked_until is not None:
        vault_agent.start(home, new, unlocked_until)


def remove_passcode(home: str | os.PathLike[str], old_key: bytes) -> None:
    """Decrypt the home back to plain SQLite (the old behaviour)."""
    home = Path(home).expanduser()
    kf = require_keyfile(home)
    _rewrite(home, old_key, None, keyring=False, rng=os.urandom)
    if kf.keyring:
        keyring_set(home, None)


def require_keyfile(home: Path) -> KeyFile:
    kf = read_keyfile(home)
    if kf is None:
        raise errors.LocalStateError("this home has no passcode", hint="set one with: imsg passcode set")
    return kf


def _raw_key(key: bytes | None) -> str:
    return "''" if key is None else f"\"x'{key.hex()}'\""


def _rewrite(
    home: Path,
    old: bytes | None,
    to: tuple[bytes, str] | None,
    *,
    keyring: bool,
    rng: Callable[[int], bytes],
    **argon2: Unpack[Argon2Params],
) -> None:
    """Copy the database into a new file under the new storage key of `to` (the key and the
    passcode that wraps it; None: plain), then commit with one rename. Holds the home's lock
    exclusively throughout (HomeBusyError if a process has it)."""
    import sqlcipher3

    new = to[0] if to is not None else None

    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = _lock(home, exclusive=True)
    try:
        _recover(home)
        db_path, tmp = home / STORE_FILE, home / (STORE_FILE + ".rekey")
        if old is None and not db_path.exists():
            from imsg.store.sqlite import SQLiteStore

            SQLiteStore(db_path).close()  # a new home: encrypt its empty schema
        tmp.unlink(missing_ok=True)
        os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600))
        db = sqlcipher3.connect(str(db_path), isolation_level=None)
        try:
            db.execute("PRAGMA cipher_log_level = NONE")
            if old is not None:
                db.execute(f"PRAGMA key = {_raw_key(old)}")
            db.execute("PRAGMA temp_store = MEMORY")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            db.execute(f"ATTACH DATABASE ? AS fresh KEY {_raw_key(new)}", (str(tmp),))
            db.execute("SELECT sqlcipher_export('fresh')")
            db.execute("DETACH DATABASE fresh")
        finally:
            db.close()
        _fsync(tmp)
        header = tmp.read_bytes()[:16]
        if to is not None:
            new_key, passcode = to
            kf = wrap(new_key, passcode, header, rng=rng, keyring=keyring, **argon2)
            _write_new(home / (KEY_FILE + ".next"), kf.dumps())
            if keyring:
                keyring_set(home, new)
        old_fd = os.open(db_path, os.O_RDWR)
        try:
            os.replace(tmp, db_path)  # the commit point (see _recover)
            _fsync_dir(home)
            if new is not None:
                os.replace(home / (KEY_FILE + ".next"), home / KEY_FILE)
            else:
                (home / KEY_FILE).unlink(missing_ok=True)
            _fsync_dir(home)
            _zero(old_fd)
        finally:
            os.close(old_fd)
        for suffix in ("-wal", "-shm"):  # the old file's (emptied by the checkpoint above)
            (home / (STORE_FILE + suffix)).unlink(missing_ok=True)
    finally:
        os.close(fd)
    from imsg.store import vault_agent

    vault_agent.stop(home)  # an agent holding the old key would now unlock nothing


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _zero(fd: int) -> None:
    """Overwrite a replaced database file in place before its blocks are freed."""
    size = os.fstat(fd).st_size
    block = b"\0" * (1 << 20)
    os.lseek(fd, 0, os.SEEK_SET)
    left = size
    while left:
        left -= os.write(fd, block[: min(left, len(block))])
    os.fsync(fd)
