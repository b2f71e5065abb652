"""SQLite storage: WAL, synchronous=FULL, and group commit.

A single writer thread owns the only writing connection. Every state change is a small
function queued to it; the thread takes everything queued, runs it all in one transaction,
COMMITs once (one fsync for the whole group), and only then
resolves the callers' futures. An fsync costs ~0.35 ms here, so committing each send alone
caps out near 2,900/s; grouped, the cost is shared by every request that arrived meanwhile.
Nothing is acknowledged before its COMMIT returns, so kill -9 loses nothing acknowledged.

WAL checkpoints run in a thread of their own (PASSIVE, once a second) instead of inside
some unlucky writer's COMMIT, where they stalled the whole group behind a database fsync.

Reads use a separate connection on the event loop thread: they are indexed lookups of
microseconds, and in WAL mode a reader never waits for the writer, so handing each one to a
thread would cost more than it saves (see scripts/bench_relay).
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from imsg_relay.auth import same_digest
from imsg_relay.errors import StorageUnavailable
from imsg_relay.storage import sqlite_handles
from imsg_relay.storage.base import (
    Account,
    AccountNotFound,
    BackupInfo,
    BlobInfo,
    BlobNotFound,
    BlobQuotaExceeded,
    Bundle,
    ChannelNotFound,
    DeviceMismatch,
    DeviceRef,
    Envelope,
    HandleRow,
    KeyCounts,
    OneTimeKey,
    SignedKey,
    StorageConflict,
)

log = logging.getLogger("imsg_relay.storage")

SCHEMA_VERSION = 5  # 2: provisioning channels; 3: attachment blobs; 4: sealed access, profiles;
# 5: handles table (OPRF-blinded), accounts without handle_hmac

# No sender column anywhere: an envelope row is (mailbox, message id, bytes, time).
# Handles are kept only blinded, in `handles` (storage/sqlite_handles.py); tokens only as SHA-256.
SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    account_id  TEXT PRIMARY KEY,
    account_key BLOB NOT NULL,
    device_list BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    account_id TEXT NOT NULL REFERENCES accounts(account_id),
    device_id  INTEGER NOT NULL,
    token_hash BLOB NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (account_id, device_id)
);
CREATE TABLE IF NOT EXISTS signed_prekeys (
    account_id TEXT NOT NULL,
    device_id  INTEGER NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('x25519', 'kem')),
    key_id     INTEGER NOT NULL,
    public_key BLOB NOT NULL,
    signature  BLOB NOT NULL,
    PRIMARY KEY (account_id, device_id, kind)
);
CREATE TABLE IF NOT EXISTS one_time_prekeys (
    account_id TEXT NOT NULL,
    device_id  INTEGER NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('x25519', 'kem')),
    key_id     INTEGER NOT NULL,
    public_key BLOB NOT NULL,
    signature  BLOB,
    PRIMARY KEY (account_id, device_id, kind, key_id)
);
CREATE TABLE IF NOT EXISTS envelopes (
    seq         INTEGER PRIMARY KEY,
    account_id  TEXT NOT NULL,
    device_id   INTEGER NOT NULL,
    message_id  TEXT NOT NULL,
    body        BLOB NOT NULL,
    received_at INTEGER NOT NULL,
    UNIQUE (account_id, device_id, message_id)
);
CREATE INDEX IF NOT EXISTS envelopes_mailbox ON envelopes (account_id, device_id, seq);
CREATE INDEX IF NOT EXISTS envelopes_received ON envelopes (received_at);
-- Device linking: short-lived channels. Message rows carry no account, only the channel.
CREATE TABLE IF NOT EXISTS provisioning_channels (
    channel    TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS provisioning_channels_account ON provisioning_channels (account_id);
CREATE INDEX IF NOT EXISTS provisioning_channels_expiry ON provisioning_channels (expires_at);
CREATE TABLE IF NOT EXISTS provisioning_messages (
    seq     INTEGER PRIMARY KEY,
    channel TEXT NOT NULL,
    box     TEXT NOT NULL CHECK (box IN ('new', 'existing')),
    body    BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS provisioning_messages_box ON provisioning_messages (channel, box, seq);
-- Attachment blobs: metadata only, the ciphertext is in the blob store. The account is the
-- uploader (quota, writes); downloads are recorded nowhere.
CREATE TABLE IF NOT EXISTS blobs (
    blob_id    TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    size       INTEGER NOT NULL,
    part_size  INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    complete   INTEGER NOT NULL DEFAULT 0,
    sha256     BLOB
);
CREATE INDEX IF NOT EXISTS blobs_account ON blobs (account_id, created_at);
CREATE INDEX IF NOT EXISTS blobs_created ON blobs (created_at);
CREATE TABLE IF NOT EXISTS blob_parts (
    blob_id TEXT NOT NULL,
    idx     INTEGER NOT NULL,
    PRIMARY KEY (blob_id, idx)
);
-- Sealed sender: the recipient's access-key verifier (SHA-256, never the key) and flag.
CREATE TABLE IF NOT EXISTS sealed_access (
    account_id      TEXT PRIMARY KEY,
    access_verifier BLOB,
    allow_anyone    INTEGER NOT NULL DEFAULT 0
);
-- Backups: one per account. The ciphertext is in the blob store under blob_id (no row in
-- blobs: a backup lives until the account deletes it). access_hash is SHA-256 of a token
-- derived from the recovery code: it lets a new device fetch the backup and enrol itself.
CREATE TABLE IF NOT EXISTS backups (
    account_id  TEXT PRIMARY KEY,
    access_hash BLOB NOT NULL UNIQUE,
    blob_id     TEXT NOT NULL,
    size        INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
-- Profiles: one ciphertext per account (name and photo under the profile key, which the
-- relay never holds), filed under an id derived from that key; replaced on each upload.
CREATE TABLE IF NOT EXISTS profiles (
    account_id TEXT PRIMARY KEY,
    key_id     BLOB NOT NULL,
    revision   INTEGER NOT NULL,
    body       BLOB NOT NULL,
    updated_at INTEGER NOT NULL
);
"""

CHECKPOINT_INTERVAL = 1.0  # seconds between PASSIVE checkpoints of the WAL
MAX_GROUP = 512  # operations in one transaction; bounds how long one commit holds results


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA synchronous = FULL")  # NORMAL in WAL may lose commits on power loss
    conn.execute("PRAGMA foreign_keys = OFF")
    return conn


class _Op:
    __slots__ = ("fn", "future", "loop")

    def __init__(
        self, fn: Callable[[sqlite3.Connection], Any], future: asyncio.Future, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.fn = fn
        self.future = future
        self.loop = loop


def _resolve(results: list[tuple[_Op, bool, Any]]) -> None:
    for op, ok, value in results:
        if op.future.done():  # the caller went away (cancelled); nothing to tell it
            continue
        if ok:
            op.future.set_result(value)
        else:
            op.future.set_exception(value)


class _Writer(threading.Thread):
    def __init__(self, path: Path) -> None:
        super().__init__(name="imsg-relay-sqlite-writer", daemon=True)
        self._path = path
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self.ready = threading.Event()
        self.failed: BaseException | None = None
        self.groups = 0
        self.ops = 0

    def submit(self, op: _Op) -> None:
        self._queue.put(op)

    def stop(self) -> None:
        self._queue.put(None)

    def run(self) -> None:
        try:
            conn = _connect(self._path)
            conn.execute("PRAGMA wal_autocheckpoint = 0")  # the checkpointer thread does it
        except BaseException as exc:  # reported to open(), which raises it
            self.failed = exc
            self.ready.set()
            return
        self.ready.set()
        stopping = False
        try:
            while not stopping:
                first = self._queue.get()
                if first is None:
                    break
                batch = [first]
                while len(batch) < MAX_GROUP:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stopping = True
                        break
                    batch.append(item)
                self._run_group(conn, batch)
        finally:
            conn.close()

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # no transaction was open

    def _run_group(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        # Every operation raises its refusals (conflict, mismatch, not found) before it
        # writes anything, so a refused operation leaves nothing to undo and needs no
        # savepoint of its own. A database error mid-group rolls the whole group back and
        # fails all of it as unavailable (503, retryable): nothing in it was acknowledged.
        results: list[tuple[_Op, bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in batch:
                try:
                    results.append((op, True, op.fn(conn)))
                except (
                    StorageConflict,
                    AccountNotFound,
                    DeviceMismatch,
                    ChannelNotFound,
                    BlobNotFound,
                    BlobQuotaExceeded,
                ) as exc:
                    results.append((op, False, exc))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            log.error("storage transaction failed: %s", type(exc).__name__)
            self._rollback(conn)
            results = [(op, False, StorageUnavailable(type(exc).__name__)) for op in batch]
        except Exception as exc:  # a bug in one operation must not kill the writer thread
            # Nothing after this thread would ever answer again: every caller would wait
            # forever. Roll the group back (the buggy operation may have written half),
            # give that operation its own error and the others a retryable 503.
            log.error("storage operation failed: %s", type(exc).__name__)
            self._rollback(conn)
            failed = batch[len(results)] if len(results) < len(batch) else None
            results = [(op, False, exc if op is failed else StorageUnavailable("group rolled back")) for op in batch]
        self.groups += 1
        self.ops += len(batch)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Op, bool, Any]]] = {}
        for item in results:
            by_loop.setdefault(item[0].loop, []).append(item)
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, items)
            except RuntimeError:  # that loop is closed; its callers are gone
                pass


class SQLiteStorage(sqlite_handles.SQLiteHandles):
    """Storage in one SQLite file, `relay.db` in the data directory."""

    def __init__(self, data_dir: Path | str) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / "relay.db"
        self._writer: _Writer | None = None
        self._reader: sqlite3.Connection | None = None
        self._checkpointer: threading.Thread | None = None
        self._stop_checkpoints = threading.Event()

    # lifecycle

    async def open(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Created 0600 before SQLite opens it; SQLite gives the -wal and -shm files the same.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        setup = sqlite3.connect(self.path, isolation_level=None)
        try:
            setup.execute("PRAGMA journal_mode = WAL")
            sqlite_handles.migrate_accounts(setup)
            setup.executescript(SCHEMA + sqlite_handles.SCHEMA)
            setup.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        finally:
            setup.close()
        writer = _Writer(self.path)
        writer.start()
        writer.ready.wait()
        if writer.failed is not None:
            raise writer.failed
        self._writer = writer
        self._reader = _connect(self.path)
        self._stop_checkpoints = threading.Event()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="imsg-relay-sqlite-checkpoint", daemon=True
        )
        self._checkpointer.start()

    def _checkpoint_loop(self) -> None:
        conn = _connect(self.path)
        try:
            while not self._stop_checkpoints.wait(CHECKPOINT_INTERVAL):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # retried next interval
                    log.warning("wal checkpoint failed: %s", type(exc).__name__)
        finally:
            conn.close()

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._stop_checkpoints.set()
            await asyncio.get_running_loop().run_in_executor(None, self._checkpointer.join)
            self._checkpointer = None
        if self._writer is not None:
            self._writer.stop()
            await asyncio.get_running_loop().run_in_executor(None, self._writer.join)
            self._writer = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    async def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        if self._writer is None:
            raise StorageUnavailable("storage is closed")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._writer.submit(_Op(fn, future, loop))
        return await future

    def _read(self) -> sqlite3.Connection:
        if self._reader is None:
            raise StorageUnavailable("storage is closed")
        return self._reader

    @property
    def group_stats(self) -> tuple[int, int]:
        """(transactions committed, operations in them): their ratio is the group size."""
        w = self._writer
        return (w.groups, w.ops) if w else (0, 0)

    # accounts and devices

    async def create_account(
        self,
        account_id: str,
        account_key: bytes,
        handle: HandleRow | None,
        device_list: bytes,
        device_id: int,
        token_hash: bytes,
        now_ms: int,
    ) -> None:
        def op(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM accounts WHERE account_id = ?", (account_id,)).fetchone():
                raise StorageConflict("account_exists")
            if conn.execute("SELECT 1 FROM devices WHERE token_hash = ?", (token_hash,)).fetchone():
                raise StorageConflict("token_taken")
            if handle is not None:  # raises handle_taken before anything is written
                sqlite_handles.insert_handle(conn, handle, None)
            conn.execute("INSERT INTO accounts VALUES (?, ?, ?, ?)", (account_id, account_key, device_list, now_ms))
            conn.execute("INSERT INTO devices VALUES (?, ?, ?, ?)", (account_id, device_id, token_hash, now_ms))

        await self._write(op)

    async def add_device(
        self,
        account_id: str,
        device_id: int,
        token_hash: bytes,
        device_list: bytes,
        now_ms: int,
        max_devices: int | None = None,
    ) -> None:
        def op(conn: sqlite3.Connection) -> None:
            if not conn.execute("SELECT 1 FROM accounts WHERE account_id = ?", (account_id,)).fetchone():
                raise AccountNotFound(account_id)
            if conn.execute(
                "SELECT 1 FROM devices WHERE account_id = ? AND device_id = ?", (account_id, device_id)
            ).fetchone():
                raise StorageConflict("device_exists")
            if (
                max_devices is not None
                and conn.execute("SELECT count(*) FROM devices WHERE account_id = ?", (account_id,)).fetchone()[0]
                >= max_devices
            ):
                raise StorageConflict("too_many_devices")
            if conn.execute("SELECT 1 FROM devices WHERE token_hash = ?", (token_hash,)).fetchone():
                raise StorageConflict("token_taken")
            conn.execute("INSERT INTO devices VALUES (?, ?, ?, ?)", (account_id, device_id, token_hash, now_ms))
            conn.execute("UPDATE accounts SET device_list = ? WHERE account_id = ?", (device_list, account_id))

        await self._write(op)

    async def remove_device(self, account_id: str, device_id: int, device_list: bytes | None) -> None:
        def op(conn: sqlite3.Connection) -> None:
            gone = conn.execute(
                "DELETE FROM devices WHERE account_id = ? AND device_id = ?", (account_id, device_id)
            ).rowcount
            if not gone:
                raise AccountNotFound(account_id)
            for table in ("signed_prekeys", "one_time_prekeys", "envelopes"):
                conn.execute(f"DELETE FROM {table} WHERE account_id = ? AND device_id = ?", (account_id, device_id))
            if device_list is not None:
                conn.execute("UPDATE accounts SET device_list = ? WHERE account_id = ?", (device_list, account_id))

        await self._write(op)

    async def authenticate(self, token_hash: bytes) -> DeviceRef | None:
        row = (
            self._read()
            .execute("SELECT account_id, device_id, token_hash FROM devices WHERE token_hash = ?", (token_hash,))
            .fetchone()
        )
        if row is None:
            return None
        from imsg_relay.auth import same_digest

        if not same_digest(row[2], token_hash):
            return None
        return DeviceRef(row[0], row[1])

    async def get_account(self, account_id: str) -> Account | None:
        conn = self._read()
        row = conn.execute(
            "SELECT account_key, device_list FROM accounts WHERE account_id = ?", (account_id,)
        ).fetchone()
        if row is None:
            return None
        devices = tuple(
            r[0]
            for r in conn.execute(
                "SELECT device_id FROM devices WHERE account_id = ? ORDER BY device_id", (account_id,)
            )
        )
        return Account(account_id, row[0], row[1], devices)

    # prekeys

    async def put_keys(
        self,
        device: DeviceRef,
        signed_prekey: SignedKey | None,
        kem_last_resort: SignedKey | None,
        one_time: Sequence[OneTimeKey],
        kem_one_time: Sequence[OneTimeKey],
    ) -> KeyCounts:
        a, d = device.account_id, device.device_id

        def op(conn: sqlite3.Connection) -> KeyCounts:
            for kind, key in (("x25519", signed_prekey), ("kem", kem_last_resort)):
                if key is not None:
                    conn.execute(
                        "INSERT OR REPLACE INTO signed_prekeys VALUES (?, ?, ?, ?, ?, ?)",
                        (a, d, kind, key.key_id, key.public_key, key.signature),
                    )
            for kind, keys in (("x25519", one_time), ("kem", kem_one_time)):
                conn.executemany(
                    "INSERT OR REPLACE INTO one_time_prekeys VALUES (?, ?, ?, ?, ?, ?)",
                    [(a, d, kind, k.key_id, k.public_key, k.signature) for k in keys],
                )
            return _counts(conn, a, d)

        return await self._write(op)

    async def key_counts(self, device: DeviceRef) -> KeyCounts:
        return _counts(self._read(), device.account_id, device.device_id)

    async def take_bundles(self, account_id: str, device_id: int | None) -> list[Bundle]:
        def op(conn: sqlite3.Connection) -> list[Bundle]:
            if device_id is None:
                ids = [
                    r[0]
                    for r in conn.execute(
                        "SELECT device_id FROM devices WHERE account_id = ? ORDER BY device_id", (account_id,)
                    )
                ]
                if (
                    not ids
                    and not conn.execute("SELECT 1 FROM accounts WHERE account_id = ?", (account_id,)).fetchone()
                ):
                    raise AccountNotFound(account_id)
            else:
                if not conn.execute(
                    "SELECT 1 FROM devices WHERE account_id = ? AND device_id = ?", (account_id, device_id)
                ).fetchone():
                    raise AccountNotFound(account_id)
                ids = [device_id]
            bundles = []
            for dev in ids:
                bundle = _take_bundle(conn, account_id, dev)
                if bundle is not None:
                    bundles.append(bundle)
            return bundles

        return await self._write(op)

    # mailboxes

    async def store_envelopes(
        self, account_id: str, message_id: str, bodies: dict[int, bytes], exclude_device: int | None, now_ms: int
    ) -> int:
        rows = [(account_id, dev, message_id, body, now_ms) for dev, body in bodies.items()]

        def op(conn: sqlite3.Connection) -> int:
            current = {r[0] for r in conn.execute("SELECT device_id FROM devices WHERE account_id = ?", (account_id,))}
            if not current:
                raise AccountNotFound(account_id)
            current.discard(exclude_device)
            given = set(bodies)
            if given != current:
                raise DeviceMismatch(current - given, given - current)
            conn.executemany(
                "INSERT OR IGNORE INTO envelopes (account_id, device_id, message_id, body,"
                " received_at) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            return len(rows)

        return await self._write(op)

    async def fetch(
        self, device: DeviceRef, limit: int, not_before_ms: int, max_bytes: int
    ) -> tuple[list[Envelope], bool]:
        cursor = self._read().execute(
            "SELECT message_id, body, received_at FROM envelopes"
            " WHERE account_id = ? AND device_id = ? AND received_at >= ?"
            " ORDER BY seq LIMIT ?",
            (device.account_id, device.device_id, not_before_ms, limit + 1),
        )
        out: list[Envelope] = []
        size = 0
        more = False
        for message_id, body, received_at in cursor:
            if len(out) == limit or (out and size + len(body) > max_bytes):
                more = True
                break
            out.append(Envelope(message_id, body, received_at))
            size += len(body)
        cursor.close()
        return out, more

    async def ack(self, device: DeviceRef, message_ids: Sequence[str]) -> int:
        rows = [(device.account_id, device.device_id, m) for m in dict.fromkeys(message_ids)]

        def op(conn: sqlite3.Connection) -> int:
            before = conn.total_changes
            conn.executemany("DELETE FROM envelopes WHERE account_id = ? AND device_id = ? AND message_id = ?", rows)
            return conn.total_changes - before

        return await self._write(op)

    async def delete_expired(self, cutoff_ms: int, limit: int) -> int:
        def op(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM envelopes WHERE seq IN (SELECT seq FROM envelopes"
                " WHERE received_at < ? ORDER BY received_at LIMIT ?)",
                (cutoff_ms, limit),
            ).rowcount

        return await self._write(op)

    # provisioning channels

    async def create_channel(self, channel: str, account_id: str, now_ms: int, expires_at: int, max_open: int) -> None:
        def op(conn: sqlite3.Connection) -> None:
            open_now = conn.execute(
                "SELECT count(*) FROM provisioning_channels WHERE account_id = ? AND expires_at > ?",
                (account_id, now_ms),
            ).fetchone()[0]
            if open_now >= max_open:
                raise StorageConflict("too_many_channels")
            if conn.execute("SELECT 1 FROM provisioning_channels WHERE channel = ?", (channel,)).fetchone():
                raise StorageConflict("channel_exists")
            conn.execute(
                "INSERT INTO provisioning_channels VALUES (?, ?, ?, ?)", (channel, account_id, now_ms, expires_at)
            )

        await self._write(op)

    async def put_provisioning(self, channel: str, box: str, body: bytes, now_ms: int, max_queued: int) -> int:
        def op(conn: sqlite3.Connection) -> int:
            _live_channel(conn, channel, now_ms)
            queued = conn.execute(
                "SELECT count(*) FROM provisioning_messages WHERE channel = ? AND box = ?", (channel, box)
            ).fetchone()[0]
            if queued >= max_queued:
                raise StorageConflict("box_full")
            conn.execute(
                "INSERT INTO provisioning_messages (channel, box, body) VALUES (?, ?, ?)", (channel, box, body)
            )
            return queued + 1

        return await self._write(op)

    async def take_provisioning(self, channel: str, box: str, now_ms: int) -> bytes | None:
        # Served from the reader when the box is empty (the common case in a long poll), so
        # polling an empty box costs no write transaction; the delete goes to the writer.
        conn = self._read()
        _live_channel(conn, channel, now_ms)
        if not conn.execute(
            "SELECT 1 FROM provisioning_messages WHERE channel = ? AND box = ? LIMIT 1", (channel, box)
        ).fetchone():
            return None

        def op(conn: sqlite3.Connection) -> bytes | None:
            _live_channel(conn, channel, now_ms)
            row = conn.execute(
                "DELETE FROM provisioning_messages WHERE seq = (SELECT seq FROM"
                " provisioning_messages WHERE channel = ? AND box = ? ORDER BY seq LIMIT 1)"
                " RETURNING body",
                (channel, box),
            ).fetchone()
            return None if row is None else row[0]

        return await self._write(op)

    async def close_channel(self, channel: str, account_id: str, now_ms: int) -> None:
        def op(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT expires_at FROM provisioning_channels WHERE channel = ? AND account_id = ?",
                (channel, account_id),
            ).fetchone()
            if row is None:
                raise ChannelNotFound(channel)
            conn.execute("DELETE FROM provisioning_messages WHERE channel = ?", (channel,))
            conn.execute("DELETE FROM provisioning_channels WHERE channel = ?", (channel,))
            return row[0] > now_ms

        # An expired channel is deleted all the same, and then reported as not found, as
        # every other route reports it (raised out here: refusals never follow a write).
        if not await self._write(op):
            raise ChannelNotFound(channel)

    async def delete_expired_channels(self, now_ms: int, limit: int) -> int:
        def op(conn: sqlite3.Connection) -> int:
            ids = [
                (r[0],)
                for r in conn.execute(
                    "SELECT channel FROM provisioning_channels WHERE expires_at <= ? ORDER BY expires_at LIMIT ?",
                    (now_ms, limit),
                )
            ]
            conn.executemany("DELETE FROM provisioning_messages WHERE channel = ?", ids)
            conn.executemany("DELETE FROM provisioning_channels WHERE channel = ?", ids)
            return len(ids)

        return await self._write(op)

    # attachment blobs

    async def create_blob(
        self, blob_id: str, account_id: str, size: int, part_size: int, now_ms: int, live_after_ms: int, quota: int
    ) -> None:
        def op(conn: sqlite3.Connection) -> None:
            used = conn.execute(
                "SELECT coalesce(sum(size), 0) FROM blobs WHERE account_id = ? AND created_at > ?",
                (account_id, live_after_ms),
            ).fetchone()[0]
            if used + size > quota:
                raise BlobQuotaExceeded(used)
            if conn.execute("SELECT 1 FROM blobs WHERE blob_id = ?", (blob_id,)).fetchone():
                raise StorageConflict("blob_exists")
            conn.execute(
                "INSERT INTO blobs (blob_id, account_id, size, part_size, created_at) VALUES (?, ?, ?, ?, ?)",
                (blob_id, account_id, size, part_size, now_ms),
            )

        await self._write(op)

    async def get_blob(self, blob_id: str, live_after_ms: int) -> BlobInfo | None:
        return _blob(self._read(), blob_id, live_after_ms)

    async def add_blob_part(self, blob_id: str, account_id: str, index: int, live_after_ms: int) -> BlobInfo:
        def op(conn: sqlite3.Connection) -> BlobInfo:
            info = _blob(conn, blob_id, live_after_ms)
            if info is None or info.account_id != account_id:
                raise BlobNotFound(blob_id)
            if info.complete:
                raise StorageConflict("blob_complete")
            conn.execute("INSERT OR IGNORE INTO blob_parts VALUES (?, ?)", (blob_id, index))
            return _blob(conn, blob_id, live_after_ms)

        return await self._write(op)

    async def complete_blob(self, blob_id: str, account_id: str, sha256: bytes, live_after_ms: int) -> BlobInfo:
        def op(conn: sqlite3.Connection) -> BlobInfo:
            info = _blob(conn, blob_id, live_after_ms)
            if info is None or info.account_id != account_id:
                raise BlobNotFound(blob_id)
            conn.execute(
                "UPDATE blobs SET complete = 1, sha256 = ? WHERE blob_id = ? AND complete = 0", (sha256, blob_id)
            )
            return _blob(conn, blob_id, live_after_ms)

        return await self._write(op)

    async def delete_blob(self, blob_id: str, account_id: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "DELETE FROM blobs WHERE blob_id = ? AND account_id = ? RETURNING created_at", (blob_id, account_id)
            ).fetchone()
            if row is None:
                return False
            conn.execute("DELETE FROM blob_parts WHERE blob_id = ?", (blob_id,))
            return True

        return await self._write(op)

    async def expired_blobs(self, live_after_ms: int, limit: int) -> list[str]:
        return [
            r[0]
            for r in self._read().execute(
                "SELECT blob_id FROM blobs WHERE created_at <= ? ORDER BY created_at LIMIT ?", (live_after_ms, limit)
            )
        ]

    async def delete_blobs(self, blob_ids: Sequence[str]) -> int:
        ids = [(b,) for b in dict.fromkeys(blob_ids)]

        def op(conn: sqlite3.Connection) -> int:
            before = conn.total_changes
            conn.executemany("DELETE FROM blobs WHERE blob_id = ?", ids)
            deleted = conn.total_changes - before
            conn.executemany("DELETE FROM blob_parts WHERE blob_id = ?", ids)
            return deleted

        return await self._write(op)

    # backups

    async def put_backup(self, account_id: str, access_hash: bytes, blob_id: str, size: int, now_ms: int) -> str | None:
        def op(conn: sqlite3.Connection) -> str | None:
            holder = conn.execute("SELECT account_id FROM backups WHERE access_hash = ?", (access_hash,)).fetchone()
            if holder is not None and holder[0] != account_id:
                raise StorageConflict("backup_access_taken")
            old = conn.execute("SELECT blob_id FROM backups WHERE account_id = ?", (account_id,)).fetchone()
            conn.execute(
                "INSERT INTO backups VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (account_id) DO UPDATE"
                " SET access_hash = excluded.access_hash, blob_id = excluded.blob_id,"
                " size = excluded.size, updated_at = excluded.updated_at",
                (account_id, access_hash, blob_id, size, now_ms, now_ms),
            )
            return None if old is None else old[0]

        return await self._write(op)

    async def get_backup(self, account_id: str) -> BackupInfo | None:
        row = (
            self._read()
            .execute(
                "SELECT account_id, blob_id, size, created_at, updated_at FROM backups WHERE account_id = ?",
                (account_id,),
            )
            .fetchone()
        )
        return None if row is None else BackupInfo(*row)

    async def backup_by_access(self, access_hash: bytes) -> BackupInfo | None:
        row = (
            self._read()
            .execute(
                "SELECT account_id, blob_id, size, created_at, updated_at,"
                " access_hash FROM backups WHERE access_hash = ?",
                (access_hash,),
            )
            .fetchone()
        )
        if row is None or not same_digest(bytes(row[5]), access_hash):
            return None
        return BackupInfo(*row[:5])

    async def delete_backup(self, account_id: str) -> str | None:
        def op(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("DELETE FROM backups WHERE account_id = ? RETURNING blob_id", (account_id,)).fetchone()
            return None if row is None else row[0]

        return await self._write(op)

    # the privacy report

    async def report_rows(self, query: str, params: Sequence[object]) -> list[tuple]:
        return self._read().execute(query, tuple(params)).fetchall()

    # profiles

    async def put_profile(self, account_id: str, key_id: bytes, revision: int, body: bytes, now_ms: int) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "INSERT INTO profiles VALUES (?, ?, ?, ?, ?) ON CONFLICT (account_id) DO UPDATE"
                " SET key_id = excluded.key_id, revision = excluded.revision, body = excluded.body,"
                " updated_at = excluded.updated_at WHERE profiles.revision <= excluded.revision",
                (account_id, key_id, revision, body, now_ms),
            )
            return cur.rowcount == 1

        return await self._write(op)

    async def get_profile(self, account_id: str) -> tuple[bytes, bytes] | None:
        row = self._read().execute("SELECT key_id, body FROM profiles WHERE account_id = ?", (account_id,)).fetchone()
        return (row[0], row[1]) if row else None

    # sealed sender

    async def get_sealed_access(self, account_id: str) -> tuple[bytes | None, bool]:
        row = (
            self._read()
            .execute("SELECT access_verifier, allow_anyone FROM sealed_access WHERE account_id = ?", (account_id,))
            .fetchone()
        )
        return (row[0], bool(row[1])) if row else (None, False)

    async def set_sealed_access(self, account_id: str, verifier: bytes | None, allow_anyone: bool) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO sealed_access (account_id, access_verifier, allow_anyone)"
                " VALUES (?, ?, ?) ON CONFLICT (account_id) DO UPDATE SET"
                " access_verifier = COALESCE(excluded.access_verifier, access_verifier),"
                " allow_anyone = excluded.allow_anyone",
                (account_id, verifier, int(allow_anyone)),
            )

        await self._write(op)


def _blob(conn: sqlite3.Connection, blob_id: str, live_after_ms: int) -> BlobInfo | None:
    row = conn.execute(
        "SELECT account_id, size, part_size, created_at, complete, sha256"
        " FROM blobs WHERE blob_id = ? AND created_at > ?",
        (blob_id, live_after_ms),
    ).fetchone()
    if row is None:
        return None
    received = tuple(
        r[0] for r in conn.execute("SELECT idx FROM blob_parts WHERE blob_id = ? ORDER BY idx", (blob_id,))
    )
    return BlobInfo(blob_id, row[0], row[1], row[2], row[3], bool(row[4]), row[5], received)


def _live_channel(conn: sqlite3.Connection, channel: str, now_ms: int) -> None:
    row = conn.execute("SELECT expires_at FROM provisioning_channels WHERE channel = ?", (channel,)).fetchone()
    if row is None or row[0] <= now_ms:
        raise ChannelNotFound(channel)


def _counts(conn: sqlite3.Connection, account_id: str, device_id: int) -> KeyCounts:
    counts = dict(
        conn.execute(
            "SELECT kind, count(*) FROM one_time_prekeys WHERE account_id = ? AND device_id = ? GROUP BY kind",
            (account_id, device_id),
        ).fetchall()
    )
    return KeyCounts(counts.get("x25519", 0), counts.get("kem", 0))


def _take_bundle(conn: sqlite3.Connection, account_id: str, device_id: int) -> Bundle | None:
    signed = {
        kind: SignedKey(key_id, pk, sig)
        for kind, key_id, pk, sig in conn.execute(
            "SELECT kind, key_id, public_key, signature FROM signed_prekeys WHERE account_id = ? AND device_id = ?",
            (account_id, device_id),
        )
    }
    if "x25519" not in signed:
        return None
    taken: dict[str, OneTimeKey] = {}
    for kind in ("x25519", "kem"):
        row = conn.execute(
            "DELETE FROM one_time_prekeys WHERE rowid = (SELECT rowid FROM one_time_prekeys"
            " WHERE account_id = ? AND device_id = ? AND kind = ? ORDER BY key_id LIMIT 1)"
            " RETURNING key_id, public_key, signature",
            (account_id, device_id, kind),
        ).fetchone()
        if row is not None:
            taken[kind] = OneTimeKey(row[0], row[1], row[2])
    kem_one_time = taken.get("kem")
    if kem_one_time is not None and kem_one_time.signature is not None:
        kem = SignedKey(kem_one_time.key_id, kem_one_time.public_key, kem_one_time.signature)
        last_resort = False
    else:
        kem = signed.get("kem")
        last_resort = kem is not None
    return Bundle(device_id, signed["x25519"], taken.get("x25519"), kem, last_resort)
