"""PostgreSQL storage: the scale-out path. Workers are stateless and share one database.

`PostgresStorage` is the `Storage` interface over a pool of connections (database.py);
its SQL lives by concept in accounts.py, mailboxes.py, handles.py and blobs.py, the same
split as the SQLite storage, and the tables in schema.py.

    storage = PostgresStorage("host=127.0.0.1 dbname=imsg user=imsg", pool_size=10)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import psycopg

from imsg_relay.storage.base import (
    Account,
    BackupInfo,
    BlobInfo,
    Bundle,
    DeviceRef,
    Envelope,
    HandleRow,
    KeyCounts,
    OneTimeKey,
    SignedKey,
)
from imsg_relay.storage.postgres import accounts, blobs, handles, mailboxes
from imsg_relay.storage.postgres.database import Database

__all__ = ["PostgresStorage"]

SWEEP_LOCK = 7366219  # advisory lock class of the retention sweeper (with the schema's hash)


class PostgresStorage:
    def __init__(self, conninfo: str, *, pool_size: int = 8, schema: str | None = None) -> None:
        self.conninfo = conninfo
        self.pool_size = pool_size
        self.schema = schema  # a separate schema (namespace) per relay, e.g. for tests
        self._db = Database(conninfo, pool_size, schema)

    async def open(self) -> None:
        await self._db.open()

    async def close(self) -> None:
        await self._db.close()

    @property
    def queue_depth(self) -> int:
        """Transactions waiting for a pooled connection (a /metrics gauge)."""
        return self._db.waiting

    def sweep_turn(self) -> AbstractAsyncContextManager[bool]:
        return self._db.try_lock(SWEEP_LOCK)

    async def ping(self) -> None:
        await self._db.one("SELECT 1", ())

    async def key_fingerprint(self, fingerprint: bytes) -> bytes:
        async with self._db.tx() as conn:
            await conn.execute(
                "INSERT INTO relay_meta (name, value) VALUES ('key_fingerprint', %s) ON CONFLICT (name) DO NOTHING",
                (fingerprint,),
            )
            cur = await conn.execute("SELECT value FROM relay_meta WHERE name = 'key_fingerprint'")
            row = await cur.fetchone()
        assert row is not None  # inserted or already there, in this transaction
        return bytes(row[0])

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """One transaction on a pooled connection (for tests that look at the tables)."""
        async with self._db.tx() as conn:
            yield conn

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
        return await accounts.create_account(
            self._db, account_id, account_key, handle, device_list, device_id, token_hash, now_ms
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
        return await accounts.add_device(self._db, account_id, device_id, token_hash, device_list, now_ms, max_devices)

    async def remove_device(self, account_id: str, device_id: int, device_list: bytes | None) -> None:
        return await accounts.remove_device(self._db, account_id, device_id, device_list)

    async def authenticate(self, token_hash: bytes) -> DeviceRef | None:
        return await accounts.authenticate(self._db, token_hash)

    async def get_account(self, account_id: str) -> Account | None:
        return await accounts.get_account(self._db, account_id)

    async def put_keys(
        self,
        device: DeviceRef,
        signed_prekey: SignedKey | None,
        kem_last_resort: SignedKey | None,
        one_time: Sequence[OneTimeKey],
        kem_one_time: Sequence[OneTimeKey],
    ) -> KeyCounts:
        return await accounts.put_keys(self._db, device, signed_prekey, kem_last_resort, one_time, kem_one_time)

    async def key_counts(self, device: DeviceRef) -> KeyCounts:
        return await accounts.key_counts(self._db, device)

    async def take_bundles(self, account_id: str, device_id: int | None) -> list[Bundle]:
        return await accounts.take_bundles(self._db, account_id, device_id)

    async def store_envelopes(
        self, account_id: str, message_id: str, bodies: dict[int, bytes], exclude_device: int | None, now_ms: int
    ) -> int:
        return await mailboxes.store_envelopes(self._db, account_id, message_id, bodies, exclude_device, now_ms)

    async def fetch(
        self, device: DeviceRef, limit: int, not_before_ms: int, max_bytes: int
    ) -> tuple[list[Envelope], bool]:
        return await mailboxes.fetch(self._db, device, limit, not_before_ms, max_bytes)

    async def ack(self, device: DeviceRef, message_ids: Sequence[str]) -> int:
        return await mailboxes.ack(self._db, device, message_ids)

    async def delete_expired(self, cutoff_ms: int, limit: int) -> int:
        return await mailboxes.delete_expired(self._db, cutoff_ms, limit)

    async def create_channel(self, channel: str, account_id: str, now_ms: int, expires_at: int, max_open: int) -> None:
        return await mailboxes.create_channel(self._db, channel, account_id, now_ms, expires_at, max_open)

    async def put_provisioning(self, channel: str, box: str, body: bytes, now_ms: int, max_queued: int) -> int:
        return await mailboxes.put_provisioning(self._db, channel, box, body, now_ms, max_queued)

    async def take_provisioning(self, channel: str, box: str, now_ms: int) -> bytes | None:
        return await mailboxes.take_provisioning(self._db, channel, box, now_ms)

    async def close_channel(self, channel: str, account_id: str, now_ms: int) -> None:
        return await mailboxes.close_channel(self._db, channel, account_id, now_ms)

    async def delete_expired_channels(self, now_ms: int, limit: int) -> int:
        return await mailboxes.delete_expired_channels(self._db, now_ms, limit)

    async def create_blob(
        self, blob_id: str, account_id: str, size: int, part_size: int, now_ms: int, live_after_ms: int, quota: int
    ) -> None:
        return await blobs.create_blob(self._db, blob_id, account_id, size, part_size, now_ms, live_after_ms, quota)

    async def get_blob(self, blob_id: str, live_after_ms: int) -> BlobInfo | None:
        return await blobs.get_blob(self._db, blob_id, live_after_ms)

    async def add_blob_part(self, blob_id: str, account_id: str, index: int, live_after_ms: int) -> BlobInfo:
        return await blobs.add_blob_part(self._db, blob_id, account_id, index, live_after_ms)

    async def complete_blob(self, blob_id: str, account_id: str, sha256: bytes, live_after_ms: int) -> BlobInfo:
        return await blobs.complete_blob(self._db, blob_id, account_id, sha256, live_after_ms)

    async def delete_blob(self, blob_id: str, account_id: str) -> bool:
        return await blobs.delete_blob(self._db, blob_id, account_id)

    async def expired_blobs(self, live_after_ms: int, limit: int) -> list[str]:
        return await blobs.expired_blobs(self._db, live_after_ms, limit)

    async def delete_blobs(self, blob_ids: Sequence[str]) -> int:
        return await blobs.delete_blobs(self._db, blob_ids)

    async def put_backup(self, account_id: str, access_hash: bytes, blob_id: str, size: int, now_ms: int) -> str | None:
        return await blobs.put_backup(self._db, account_id, access_hash, blob_id, size, now_ms)

    async def get_backup(self, account_id: str) -> BackupInfo | None:
        return await blobs.get_backup(self._db, account_id)

    async def backup_by_access(self, access_hash: bytes) -> BackupInfo | None:
        return await blobs.backup_by_access(self._db, access_hash)

    async def delete_backup(self, account_id: str) -> str | None:
        return await blobs.delete_backup(self._db, account_id)

    async def report_rows(self, query: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        return await blobs.report_rows(self._db, query, params)

    async def put_profile(self, account_id: str, key_id: bytes, revision: int, body: bytes, now_ms: int) -> bool:
        return await accounts.put_profile(self._db, account_id, key_id, revision, body, now_ms)

    async def get_profile(self, account_id: str) -> tuple[bytes, bytes] | None:
        return await accounts.get_profile(self._db, account_id)

    async def get_sealed_access(self, account_id: str) -> tuple[bytes | None, bool]:
        return await accounts.get_sealed_access(self._db, account_id)

    async def set_sealed_access(self, account_id: str, verifier: bytes | None, allow_anyone: bool) -> None:
        return await accounts.set_sealed_access(self._db, account_id, verifier, allow_anyone)

    async def put_handle(self, row: HandleRow, max_handles: int) -> HandleRow:
        return await handles.put_handle(self._db, row, max_handles)

    async def get_handle(self, account_id: str, tag: bytes) -> HandleRow | None:
        return await handles.get_handle(self._db, account_id, tag)

    async def wrong_code(self, account_id: str, tag: bytes, max_tries: int) -> int:
        return await handles.wrong_code(self._db, account_id, tag, max_tries)

    async def verify_handle(self, account_id: str, tag: bytes, record: bytes) -> None:
        return await handles.verify_handle(self._db, account_id, tag, record)

    async def account_handles(self, account_id: str) -> list[HandleRow]:
        return await handles.account_handles(self._db, account_id)

    async def update_handle(
        self, account_id: str, tag: bytes, receiving: bool | None, label: bytes | None
    ) -> HandleRow | None:
        return await handles.update_handle(self._db, account_id, tag, receiving, label)

    async def remove_handle(self, account_id: str, tag: bytes) -> bool:
        return await handles.remove_handle(self._db, account_id, tag)

    async def discovery_bucket(self, low: int, high: int) -> list[tuple[bytes, bytes]]:
        return await handles.discovery_bucket(self._db, low, high)

    async def discoverable_count(self) -> int:
        return await handles.discoverable_count(self._db)
