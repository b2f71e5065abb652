"""SQLite storage: WAL, synchronous=FULL, and group commit (storage/sqlite/writer.py).

`SQLiteStorage` is the `Storage` interface over one file, `relay.db` in the data directory.
Its SQL lives by concept in accounts.py (accounts, devices, prekeys, sealed access,
profiles), mailboxes.py (envelopes, provisioning channels), handles.py (blinded handles,
discovery buckets) and blobs.py (blob metadata, backups), as functions over a connection;
this class runs each write on the group-commit writer and each read on the reader.

Reads use a separate connection on the event loop thread: they are indexed lookups of
microseconds, and in WAL mode a reader never waits for the writer, so handing each one to a
thread would cost more than it saves (see scripts/bench_relay).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from imsg_relay.errors import StorageUnavailable
from imsg_relay.storage.base import (
    Account,
    BackupInfo,
    BlobInfo,
    Bundle,
    ChannelNotFound,
    DeviceRef,
    Envelope,
    HandleRow,
    KeyCounts,
    OneTimeKey,
    SignedKey,
)
from imsg_relay.storage.sqlite import accounts, blobs, handles, mailboxes, schema
from imsg_relay.storage.sqlite.writer import Checkpointer, Op, Writer, connect

T = TypeVar("T")

__all__ = ["SQLiteStorage"]


class SQLiteStorage:
    """Storage in one SQLite file, `relay.db` in the data directory."""

    def __init__(self, data_dir: Path | str) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / "relay.db"
        self._writer: Writer | None = None
        self._reader: sqlite3.Connection | None = None
        self._checkpointer: Checkpointer | None = None

    # lifecycle

    async def open(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Created 0600 before SQLite opens it; SQLite gives the -wal and -shm files the same.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        setup = sqlite3.connect(self.path, isolation_level=None)
        try:
            setup.execute("PRAGMA journal_mode = WAL")
            schema.create(setup)
        finally:
            setup.close()
        writer = Writer(self.path)
        writer.start()
        writer.ready.wait()
        if writer.failed is not None:
            raise writer.failed
        self._writer = writer
        self._reader = connect(self.path)
        self._checkpointer = Checkpointer(self.path)
        self._checkpointer.start()

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        if self._checkpointer is not None:
            self._checkpointer.stop()
            await loop.run_in_executor(None, self._checkpointer.join)
            self._checkpointer = None
        if self._writer is not None:
            self._writer.stop()
            await loop.run_in_executor(None, self._writer.join)
            self._writer = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in the writer's next group; returns once its transaction committed."""
        if self._writer is None:
            raise StorageUnavailable("storage is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._writer.submit(Op(fn, future, loop))
        result: T = await future
        return result

    def _read(self) -> sqlite3.Connection:
        if self._reader is None:
            raise StorageUnavailable("storage is closed")
        return self._reader

    @property
    def group_stats(self) -> tuple[int, int]:
        """(transactions committed, operations in them): their ratio is the group size."""
        w = self._writer
        return (w.groups, w.ops) if w else (0, 0)

    @property
    def queue_depth(self) -> int:
        """Writes waiting for the writer thread (a /metrics gauge)."""
        w = self._writer
        return w.queued if w else 0

    @asynccontextmanager
    async def sweep_turn(self) -> AsyncIterator[bool]:
        yield True  # one process owns an SQLite database: always its turn

    async def ping(self) -> None:
        # Through the writer: a stuck writer is what makes an SQLite relay unready.
        await self._write(lambda conn: conn.execute("SELECT 1").fetchone())

    async def key_fingerprint(self, fingerprint: bytes) -> bytes:
        def record(conn: sqlite3.Connection) -> bytes:
            conn.execute("INSERT OR IGNORE INTO relay_meta (name, value) VALUES ('key_fingerprint', ?)", (fingerprint,))
            row = conn.execute("SELECT value FROM relay_meta WHERE name = 'key_fingerprint'").fetchone()
            return bytes(row[0])

        return await self._write(record)

    # accounts, devices, prekeys (accounts.py)

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
        await self._write(
            lambda conn: accounts.create_account(
                conn, account_id, account_key, handle, device_list, device_id, token_hash, now_ms
            )
        )

    async def add_device(
        self,
        account_id: str,
        device_id: int,
        token_hash: bytes,
        device_list: bytes,
        now_ms: int,
        max_devices: int | None = None,
    ) -> None:
        await self._write(
            lambda conn: accounts.add_device(conn, account_id, device_id, token_hash, device_list, now_ms, max_devices)
        )

    async def remove_device(self, account_id: str, device_id: int, device_list: bytes | None) -> None:
        await self._write(lambda conn: accounts.remove_device(conn, account_id, device_id, device_list))

    async def authenticate(self, token_hash: bytes) -> DeviceRef | None:
        return accounts.authenticate(self._read(), token_hash)

    async def get_account(self, account_id: str) -> Account | None:
        return accounts.get_account(self._read(), account_id)

    async def put_keys(
        self,
        device: DeviceRef,
        signed_prekey: SignedKey | None,
        kem_last_resort: SignedKey | None,
        one_time: Sequence[OneTimeKey],
        kem_one_time: Sequence[OneTimeKey],
    ) -> KeyCounts:
        return await self._write(
            lambda conn: accounts.put_keys(conn, device, signed_prekey, kem_last_resort, one_time, kem_one_time)
        )

    async def key_counts(self, device: DeviceRef) -> KeyCounts:
        return accounts.key_counts(self._read(), device)

    async def take_bundles(self, account_id: str, device_id: int | None) -> list[Bundle]:
        return await self._write(lambda conn: accounts.take_bundles(conn, account_id, device_id))

    # mailboxes and provisioning channels (mailboxes.py)

    async def store_envelopes(
        self, account_id: str, message_id: str, bodies: dict[int, bytes], exclude_device: int | None, now_ms: int
    ) -> int:
        return await self._write(
            lambda conn: mailboxes.store_envelopes(conn, account_id, message_id, bodies, exclude_device, now_ms)
        )

    async def fetch(
        self, device: DeviceRef, limit: int, not_before_ms: int, max_bytes: int
    ) -> tuple[list[Envelope], bool]:
        return mailboxes.fetch(self._read(), device, limit, not_before_ms, max_bytes)

    async def ack(self, device: DeviceRef, message_ids: Sequence[str]) -> int:
        return await self._write(lambda conn: mailboxes.ack(conn, device, message_ids))

    async def delete_expired(self, cutoff_ms: int, limit: int) -> int:
        return await self._write(lambda conn: mailboxes.delete_expired(conn, cutoff_ms, limit))

    async def create_channel(self, channel: str, account_id: str, now_ms: int, expires_at: int, max_open: int) -> None:
        await self._write(
            lambda conn: mailboxes.create_channel(conn, channel, account_id, now_ms, expires_at, max_open)
        )

    async def put_provisioning(self, channel: str, box: str, body: bytes, now_ms: int, max_queued: int) -> int:
        return await self._write(lambda conn: mailboxes.put_provisioning(conn, channel, box, body, now_ms, max_queued))

    async def take_provisioning(self, channel: str, box: str, now_ms: int) -> bytes | None:
        # Answered from the reader when the box is empty (the common case in a long poll),
        # so polling an empty box costs no write transaction; the delete goes to the writer.
        if not mailboxes.has_provisioning(self._read(), channel, box, now_ms):
            return None
        return await self._write(lambda conn: mailboxes.take_provisioning(conn, channel, box, now_ms))

    async def close_channel(self, channel: str, account_id: str, now_ms: int) -> None:
        # An expired channel is deleted all the same, and then reported as not found, as
        # every other route reports it (raised out here: refusals never follow a write).
        if not await self._write(lambda conn: mailboxes.close_channel(conn, channel, account_id, now_ms)):
            raise ChannelNotFound(channel)

    async def delete_expired_channels(self, now_ms: int, limit: int) -> int:
        return await self._write(lambda conn: mailboxes.delete_expired_channels(conn, now_ms, limit))

    # attachment blobs and backups (blobs.py)

    async def create_blob(
        self, blob_id: str, account_id: str, size: int, part_size: int, now_ms: int, live_after_ms: int, quota: int
    ) -> None:
        await self._write(
            lambda conn: blobs.create_blob(conn, blob_id, account_id, size, part_size, now_ms, live_after_ms, quota)
        )

    async def get_blob(self, blob_id: str, live_after_ms: int) -> BlobInfo | None:
        return blobs.get_blob(self._read(), blob_id, live_after_ms)

    async def add_blob_part(self, blob_id: str, account_id: str, index: int, live_after_ms: int) -> BlobInfo:
        return await self._write(lambda conn: blobs.add_blob_part(conn, blob_id, account_id, index, live_after_ms))

    async def complete_blob(self, blob_id: str, account_id: str, sha256: bytes, live_after_ms: int) -> BlobInfo:
        return await self._write(lambda conn: blobs.complete_blob(conn, blob_id, account_id, sha256, live_after_ms))

    async def delete_blob(self, blob_id: str, account_id: str) -> bool:
        return await self._write(lambda conn: blobs.delete_blob(conn, blob_id, account_id))

    async def expired_blobs(self, live_after_ms: int, limit: int) -> list[str]:
        return blobs.expired_blobs(self._read(), live_after_ms, limit)

    async def delete_blobs(self, blob_ids: Sequence[str]) -> int:
        return await self._write(lambda conn: blobs.delete_blobs(conn, blob_ids))

    async def put_backup(self, account_id: str, access_hash: bytes, blob_id: str, size: int, now_ms: int) -> str | None:
        return await self._write(lambda conn: blobs.put_backup(conn, account_id, access_hash, blob_id, size, now_ms))

    async def get_backup(self, account_id: str) -> BackupInfo | None:
        return blobs.get_backup(self._read(), account_id)

    async def backup_by_access(self, access_hash: bytes) -> BackupInfo | None:
        return blobs.backup_by_access(self._read(), access_hash)

    async def delete_backup(self, account_id: str) -> str | None:
        return await self._write(lambda conn: blobs.delete_backup(conn, account_id))

    # profiles and sealed-sender access (accounts.py)

    async def put_profile(self, account_id: str, key_id: bytes, revision: int, body: bytes, now_ms: int) -> bool:
        return await self._write(lambda conn: accounts.put_profile(conn, account_id, key_id, revision, body, now_ms))

    async def get_profile(self, account_id: str) -> tuple[bytes, bytes] | None:
        return accounts.get_profile(self._read(), account_id)

    async def get_sealed_access(self, account_id: str) -> tuple[bytes | None, bool]:
        return accounts.get_sealed_access(self._read(), account_id)

    async def set_sealed_access(self, account_id: str, verifier: bytes | None, allow_anyone: bool) -> None:
        await self._write(lambda conn: accounts.set_sealed_access(conn, account_id, verifier, allow_anyone))

    # reachable handles and discovery (handles.py)

    async def put_handle(self, row: HandleRow, max_handles: int) -> HandleRow:
        await self._write(lambda conn: handles.insert_handle(conn, row, max_handles))
        return row

    async def get_handle(self, account_id: str, tag: bytes) -> HandleRow | None:
        return handles.get_handle(self._read(), account_id, tag)

    async def wrong_code(self, account_id: str, tag: bytes, max_tries: int) -> int:
        return await self._write(lambda conn: handles.wrong_code(conn, account_id, tag, max_tries))

    async def verify_handle(self, account_id: str, tag: bytes, record: bytes) -> None:
        await self._write(lambda conn: handles.verify_handle(conn, account_id, tag, record))

    async def account_handles(self, account_id: str) -> list[HandleRow]:
        return handles.account_handles(self._read(), account_id)

    async def update_handle(
        self, account_id: str, tag: bytes, receiving: bool | None, label: bytes | None
    ) -> HandleRow | None:
        await self._write(lambda conn: handles.update_handle(conn, account_id, tag, receiving, label))
        return await self.get_handle(account_id, tag)

    async def remove_handle(self, account_id: str, tag: bytes) -> bool:
        return await self._write(lambda conn: handles.remove_handle(conn, account_id, tag))

    async def discovery_bucket(self, low: int, high: int) -> list[tuple[bytes, bytes]]:
        return handles.discovery_bucket(self._read(), low, high)

    async def discoverable_count(self) -> int:
        return handles.discoverable_count(self._read())

    # the privacy report

    async def report_rows(self, query: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        return self._read().execute(query, tuple(params)).fetchall()
