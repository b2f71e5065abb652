"""PostgreSQL storage: the scale-out path. Workers are stateless and share one database.

Same schema as SQLite (no sender column; handles and tokens only as digests). PostgreSQL
commits concurrent transactions together on its own (group commit in the WAL writer), so
each operation is simply its own transaction on a pooled connection. One-time prekeys are
taken with `FOR UPDATE SKIP LOCKED`, so concurrent fetches never get the same key.

    storage = PostgresStorage("host=127.0.0.1 dbname=imsg user=imsg", pool_size=10)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from imsg_relay.auth import same_digest
from imsg_relay.errors import StorageUnavailable
from imsg_relay.storage import postgres_handles
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

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    account_id  TEXT PRIMARY KEY,
    account_key BYTEA NOT NULL,
    device_list BYTEA NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    account_id TEXT NOT NULL,
    device_id  INTEGER NOT NULL,
    token_hash BYTEA NOT NULL CONSTRAINT devices_token_unique UNIQUE,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, device_id)
);
CREATE TABLE IF NOT EXISTS signed_prekeys (
    account_id TEXT NOT NULL,
    device_id  INTEGER NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('x25519', 'kem')),
    key_id     BIGINT NOT NULL,
    public_key BYTEA NOT NULL,
    signature  BYTEA NOT NULL,
    PRIMARY KEY (account_id, device_id, kind)
);
CREATE TABLE IF NOT EXISTS one_time_prekeys (
    account_id TEXT NOT NULL,
    device_id  INTEGER NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('x25519', 'kem')),
    key_id     BIGINT NOT NULL,
    public_key BYTEA NOT NULL,
    signature  BYTEA,
    PRIMARY KEY (account_id, device_id, kind, key_id)
);
CREATE TABLE IF NOT EXISTS envelopes (
    seq         BIGSERIAL PRIMARY KEY,
    account_id  TEXT NOT NULL,
    device_id   INTEGER NOT NULL,
    message_id  TEXT NOT NULL,
    body        BYTEA NOT NULL,
    received_at BIGINT NOT NULL,
    UNIQUE (account_id, device_id, message_id)
);
CREATE INDEX IF NOT EXISTS envelopes_mailbox ON envelopes (account_id, device_id, seq);
CREATE INDEX IF NOT EXISTS envelopes_received ON envelopes (received_at);
CREATE TABLE IF NOT EXISTS provisioning_channels (
    channel    TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS provisioning_channels_account ON provisioning_channels (account_id);
CREATE INDEX IF NOT EXISTS provisioning_channels_expiry ON provisioning_channels (expires_at);
CREATE TABLE IF NOT EXISTS provisioning_messages (
    seq     BIGSERIAL PRIMARY KEY,
    channel TEXT NOT NULL,
    box     TEXT NOT NULL CHECK (box IN ('new', 'existing')),
    body    BYTEA NOT NULL
);
CREATE INDEX IF NOT EXISTS provisioning_messages_box ON provisioning_messages (channel, box, seq);
CREATE TABLE IF NOT EXISTS blobs (
    blob_id    TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    size       BIGINT NOT NULL,
    part_size  BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    complete   BOOLEAN NOT NULL DEFAULT FALSE,
    sha256     BYTEA
);
CREATE INDEX IF NOT EXISTS blobs_account ON blobs (account_id, created_at);
CREATE INDEX IF NOT EXISTS blobs_created ON blobs (created_at);
CREATE TABLE IF NOT EXISTS blob_parts (
    blob_id TEXT NOT NULL,
    idx     INTEGER NOT NULL,
    PRIMARY KEY (blob_id, idx)
);
CREATE TABLE IF NOT EXISTS sealed_access (
    account_id      TEXT PRIMARY KEY,
    access_verifier BYTEA,
    allow_anyone    BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE TABLE IF NOT EXISTS backups (
    account_id  TEXT PRIMARY KEY,
    access_hash BYTEA NOT NULL CONSTRAINT backups_access_unique UNIQUE,
    blob_id     TEXT NOT NULL,
    size        BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS profiles (
    account_id TEXT PRIMARY KEY,
    key_id     BYTEA NOT NULL,
    revision   BIGINT NOT NULL,
    body       BYTEA NOT NULL,
    updated_at BIGINT NOT NULL
);
"""


class PostgresStorage(postgres_handles.PostgresHandles):
    def __init__(self, conninfo: str, *, pool_size: int = 8, schema: str | None = None) -> None:
        self.conninfo = conninfo
        self.pool_size = pool_size
        self.schema = schema  # a separate schema (namespace) per relay, e.g. for tests
        self._pool: asyncio.Queue[psycopg.AsyncConnection] | None = None
        self._all: list[psycopg.AsyncConnection] = []

    async def _connect(self) -> psycopg.AsyncConnection:
        conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=False)
        if self.schema:
            await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            await conn.commit()
        return conn

    async def open(self) -> None:
        try:
            setup = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
        except psycopg.OperationalError as exc:
            raise StorageUnavailable(f"cannot reach postgresql: {exc}") from exc
        async with setup:
            if self.schema:
                await setup.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
                await setup.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            # Two workers starting together must not both create tables at once.
            await setup.execute("SELECT pg_advisory_lock(7366218)")
            try:
                await setup.execute(SCHEMA)
                await setup.execute(postgres_handles.SCHEMA)
            finally:
                await setup.execute("SELECT pg_advisory_unlock(7366218)")
        self._pool = asyncio.Queue()
        for _ in range(self.pool_size):
            conn = await self._connect()
            self._all.append(conn)
            self._pool.put_nowait(conn)

    async def close(self) -> None:
        for conn in self._all:
            await conn.close()
        self._all.clear()
        self._pool = None

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[psycopg.AsyncConnection]:
        """A pooled connection inside one transaction, committed on success."""
        if self._pool is None:
            raise StorageUnavailable("storage is closed")
        conn = await self._pool.get()
        try:
            if conn.closed or conn.broken:
                self._all.remove(conn)
                conn = await self._connect()
                self._all.append(conn)
            try:
                yield conn
                await conn.commit()
            except BaseException:
                if not conn.closed:
                    await conn.rollback()
                raise
        except psycopg.OperationalError as exc:
            raise StorageUnavailable(str(exc)) from exc
        finally:
            self._pool.put_nowait(conn)

    async def _one(self, query: str, params: Sequence[Any]) -> Any:
        async with self._tx() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchone()

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
        try:
            async with self._tx() as conn:
                await conn.execute(
                    "INSERT INTO accounts (account_id, account_key, device_list, created_at) VALUES (%s, %s, %s, %s)",
                    (account_id, account_key, device_list, now_ms),
                )
                if handle is not None:
                    await postgres_handles.insert_handle(conn, handle, None)
                await conn.execute(
                    "INSERT INTO devices VALUES (%s, %s, %s, %s)", (account_id, device_id, token_hash, now_ms)
                )
        except pg_errors.UniqueViolation as exc:
            constraint = exc.diag.constraint_name or ""
            if "handle" in constraint:
                raise StorageConflict("handle_taken") from None
            if "token" in constraint:
                raise StorageConflict("token_taken") from None
            raise StorageConflict("account_exists") from None

    async def add_device(
        self,
        account_id: str,
        device_id: int,
        token_hash: bytes,
        device_list: bytes,
        now_ms: int,
        max_devices: int | None = None,
    ) -> None:
        try:
            async with self._tx() as conn:
                # The UPDATE locks the account row, so concurrent adds to one account take
                # turns and the count below cannot go stale before the insert.
                cur = await conn.execute(
                    "UPDATE accounts SET device_list = %s WHERE account_id = %s", (device_list, account_id)
                )
                if cur.rowcount == 0:
                    raise AccountNotFound(account_id)
                if max_devices is not None:
                    cur = await conn.execute(
                        "SELECT count(*), count(*) FILTER (WHERE device_id = %s) FROM devices WHERE account_id = %s",
                        (device_id, account_id),
                    )
                    total, same = await cur.fetchone()
                    if same:
                        raise StorageConflict("device_exists")
                    if total >= max_devices:
                        raise StorageConflict("too_many_devices")
                await conn.execute(
                    "INSERT INTO devices VALUES (%s, %s, %s, %s)", (account_id, device_id, token_hash, now_ms)
                )
        except pg_errors.UniqueViolation as exc:
            if "token" in (exc.diag.constraint_name or ""):
                raise StorageConflict("token_taken") from None
            raise StorageConflict("device_exists") from None

    async def remove_device(self, account_id: str, device_id: int, device_list: bytes | None) -> None:
        async with self._tx() as conn:
            cur = await conn.execute(
                "DELETE FROM devices WHERE account_id = %s AND device_id = %s", (account_id, device_id)
            )
            if cur.rowcount == 0:
                raise AccountNotFound(account_id)
            for table in ("signed_prekeys", "one_time_prekeys", "envelopes"):
                await conn.execute(
                    sql.SQL("DELETE FROM {} WHERE account_id = %s AND device_id = %s").format(sql.Identifier(table)),
                    (account_id, device_id),
                )
            if device_list is not None:
                await conn.execute(
                    "UPDATE accounts SET device_list = %s WHERE account_id = %s", (device_list, account_id)
                )

    async def authenticate(self, token_hash: bytes) -> DeviceRef | None:
        row = await self._one(
            "SELECT account_id, device_id, token_hash FROM devices WHERE token_hash = %s", (token_hash,)
        )
        if row is None or not same_digest(bytes(row[2]), token_hash):
            return None
        return DeviceRef(row[0], row[1])

    async def get_account(self, account_id: str) -> Account | None:
        async with self._tx() as conn:
            cur = await conn.execute(
                "SELECT account_key, device_list FROM accounts WHERE account_id = %s", (account_id,)
            )
            row = await cur.fetchone()
            if row is None:
                return None
            cur = await conn.execute(
                "SELECT device_id FROM devices WHERE account_id = %s ORDER BY device_id", (account_id,)
            )
            devices = tuple(r[0] for r in await cur.fetchall())
        return Account(account_id, bytes(row[0]), bytes(row[1]), devices)

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
        async with self._tx() as conn:
            for kind, key in (("x25519", signed_prekey), ("kem", kem_last_resort)):
                if key is not None:
                    await conn.execute(
                        "INSERT INTO signed_prekeys VALUES (%s, %s, %s, %s, %s, %s)"
                        " ON CONFLICT (account_id, device_id, kind) DO UPDATE SET"
                        " key_id = EXCLUDED.key_id, public_key = EXCLUDED.public_key,"
                        " signature = EXCLUDED.signature",
                        (a, d, kind, key.key_id, key.public_key, key.signature),
                    )
            async with conn.cursor() as cur:
                for kind, keys in (("x25519", one_time), ("kem", kem_one_time)):
                    if keys:
                        await cur.executemany(
                            "INSERT INTO one_time_prekeys VALUES (%s, %s, %s, %s, %s, %s)"
                            " ON CONFLICT (account_id, device_id, kind, key_id) DO UPDATE SET"
                            " public_key = EXCLUDED.public_key, signature = EXCLUDED.signature",
                            [(a, d, kind, k.key_id, k.public_key, k.signature) for k in keys],
                        )
            return await _counts(conn, a, d)

    async def key_counts(self, device: DeviceRef) -> KeyCounts:
        async with self._tx() as conn:
            return await _counts(conn, device.account_id, device.device_id)

    async def take_bundles(self, account_id: str, device_id: int | None) -> list[Bundle]:
        async with self._tx() as conn:
            if device_id is None:
                cur = await conn.execute(
                    "SELECT device_id FROM devices WHERE account_id = %s ORDER BY device_id", (account_id,)
                )
                ids = [r[0] for r in await cur.fetchall()]
                if not ids:
                    raise AccountNotFound(account_id)
            else:
                cur = await conn.execute(
                    "SELECT 1 FROM devices WHERE account_id = %s AND device_id = %s", (account_id, device_id)
                )
                if await cur.fetchone() is None:
                    raise AccountNotFound(account_id)
                ids = [device_id]
            bundles = []
            for dev in ids:
                bundle = await _take_bundle(conn, account_id, dev)
                if bundle is not None:
                    bundles.append(bundle)
            return bundles

    # mailboxes

    async def store_envelopes(
        self, account_id: str, message_id: str, bodies: dict[int, bytes], exclude_device: int | None, now_ms: int
    ) -> int:
        async with self._tx() as conn:
            # FOR SHARE: a device removed concurrently waits for this send, or this send
            # sees it gone; never an envelope stored for a removed device.
            cur = await conn.execute("SELECT device_id FROM devices WHERE account_id = %s FOR SHARE", (account_id,))
            current = {r[0] for r in await cur.fetchall()}
            if not current:
                raise AccountNotFound(account_id)
            current.discard(exclude_device)
            given = set(bodies)
            if given != current:
                raise DeviceMismatch(current - given, given - current)
            if bodies:
                async with conn.cursor() as c:
                    await c.executemany(
                        "INSERT INTO envelopes (account_id, device_id, message_id, body,"
                        " received_at) VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                        [(account_id, d, message_id, b, now_ms) for d, b in bodies.items()],
                    )
            return len(bodies)

    async def fetch(
        self, device: DeviceRef, limit: int, not_before_ms: int, max_bytes: int
    ) -> tuple[list[Envelope], bool]:
        async with self._tx() as conn:
            cur = await conn.execute(
                "SELECT message_id, body, received_at FROM envelopes"
                " WHERE account_id = %s AND device_id = %s AND received_at >= %s"
                " ORDER BY seq LIMIT %s",
                (device.account_id, device.device_id, not_before_ms, limit + 1),
            )
            rows = await cur.fetchall()
        out: list[Envelope] = []
        size = 0
        more = False
        for message_id, body, received_at in rows:
            if len(out) == limit or (out and size + len(body) > max_bytes):
                more = True
                break
            out.append(Envelope(message_id, bytes(body), received_at))
            size += len(body)
        return out, more

    async def ack(self, device: DeviceRef, message_ids: Sequence[str]) -> int:
        async with self._tx() as conn:
            cur = await conn.execute(
                "DELETE FROM envelopes WHERE account_id = %s AND device_id = %s AND message_id = ANY(%s)",
                (device.account_id, device.device_id, list(dict.fromkeys(message_ids))),
            )
            return cur.rowcount

    async def delete_expired(self, cutoff_ms: int, limit: int) -> int:
        async with self._tx() as conn:
            cur = await conn.execute(
                "DELETE FROM envelopes WHERE seq IN (SELECT seq FROM envelopes"
                " WHERE received_at < %s ORDER BY received_at LIMIT %s)",
                (cutoff_ms, limit),
            )
            return cur.rowcount

    # provisioning channels

    async def create_channel(self, channel: str, account_id: str, now_ms: int, expires_at: int, max_open: int) -> None:
        try:
            async with self._tx() as conn:
                # Serialise channel creation per account, so the cap holds under concurrency.
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("provisioning:" + account_id,))
                cur = await conn.execute(
                    "SELECT count(*) FROM provisioning_channels WHERE account_id = %s AND expires_at > %s",
                    (account_id, now_ms),
                )
                if (await cur.fetchone())[0] >= max_open:
                    raise StorageConflict("too_many_channels")
                await conn.execute(
                    "INSERT INTO provisioning_channels VALUES (%s, %s, %s, %s)",
                    (channel, account_id, now_ms, expires_at),
                )
        except pg_errors.UniqueViolation:
            raise StorageConflict("channel_exists") from None

    async def put_provisioning(self, channel: str, box: str, body: bytes, now_ms: int, max_queued: int) -> int:
        async with self._tx() as conn:
            # FOR UPDATE on the channel row: concurrent puts take turns, so the cap holds.
            await _live_channel(conn, channel, now_ms, lock=True)
            cur = await conn.execute(
                "SELECT count(*) FROM provisioning_messages WHERE channel = %s AND box = %s", (channel, box)
            )
            queued = (await cur.fetchone())[0]
            if queued >= max_queued:
                raise StorageConflict("box_full")
            await conn.execute(
                "INSERT INTO provisioning_messages (channel, box, body) VALUES (%s, %s, %s)", (channel, box, body)
            )
            return queued + 1

    async def take_provisioning(self, channel: str, box: str, now_ms: int) -> bytes | None:
        async with self._tx() as conn:
            await _live_channel(conn, channel, now_ms, lock=False)
            cur = await conn.execute(
                "DELETE FROM provisioning_messages WHERE seq = (SELECT seq FROM"
                " provisioning_messages WHERE channel = %s AND box = %s ORDER BY seq LIMIT 1"
                " FOR UPDATE SKIP LOCKED) RETURNING body",
                (channel, box),
            )
            row = await cur.fetchone()
            return None if row is None else bytes(row[0])

    async def close_channel(self, channel: str, account_id: str, now_ms: int) -> None:
        async with self._tx() as conn:
            cur = await conn.execute(
                "DELETE FROM provisioning_channels WHERE channel = %s AND account_id = %s RETURNING expires_at",
                (channel, account_id),
            )
            row = await cur.fetchone()
            if row is None:
                raise ChannelNotFound(channel)
            await conn.execute("DELETE FROM provisioning_messages WHERE channel = %s", (channel,))
        if row[0] <= now_ms:  # deleted all the same, but it was no longer open
            raise ChannelNotFound(channel)

    async def delete_expired_channels(self, now_ms: int, limit: int) -> int:
        async with self._tx() as conn:
            cur = await conn.execute(
                "DELETE FROM provisioning_channels WHERE channel IN (SELECT channel FROM"
                " provisioning_channels WHERE expires_at <= %s ORDER BY expires_at LIMIT %s"
                " FOR UPDATE SKIP LOCKED) RETURNING channel",
                (now_ms, limit),
            )
            ids = [r[0] for r in await cur.fetchall()]
            if ids:
                await conn.execute("DELETE FROM provisioning_messages WHERE channel = ANY(%s)", (ids,))
            return len(ids)

    # attachment blobs

    async def create_blob(
        self, blob_id: str, account_id: str, size: int, part_size: int, now_ms: int, live_after_ms: int, quota: int
    ) -> None:
        try:
            async with self._tx() as conn:
                # Serialise creation per account, so concurrent uploads cannot pass the quota.
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("blobs:" + account_id,))
                cur = await conn.execute(
                    "SELECT coalesce(sum(size), 0) FROM blobs WHERE account_id = %s AND created_at > %s",
                    (account_id, live_after_ms),
                )
                used = int((await cur.fetchone())[0])
                if used + size > quota:
                    raise BlobQuotaExceeded(used)
                await conn.execute(
                    "INSERT INTO blobs (blob_id, account_id, size, part_size, created_at) VALUES (%s, %s, %s, %s, %s)",
                    (blob_id, account_id, size, part_size, now_ms),
                )
        except pg_errors.UniqueViolation:
            raise StorageConflict("blob_exists") from None

    async def get_blob(self, blob_id: str, live_after_ms: int) -> BlobInfo | None:
        async with self._tx() as conn:
            return await _blob(conn, blob_id, live_after_ms, lock=False)

    async def add_blob_part(self, blob_id: str, account_id: str, index: int, live_after_ms: int) -> BlobInfo:
        async with self._tx() as conn:
            # FOR SHARE: a concurrent complete waits for this part, or this part sees it.
            info = await _blob(conn, blob_id, live_after_ms, lock=True)
            if info is None or info.account_id != account_id:
                raise BlobNotFound(blob_id)
            if info.complete:
                raise StorageConflict("blob_complete")
            await conn.execute("INSERT INTO blob_parts VALUES (%s, %s) ON CONFLICT DO NOTHING", (blob_id, index))
            return await _blob(conn, blob_id, live_after_ms, lock=False)

    async def complete_blob(self, blob_id: str, account_id: str, sha256: bytes, live_after_ms: int) -> BlobInfo:
        async with self._tx() as conn:
            info = await _blob(conn, blob_id, live_after_ms, lock=False)
            if info is None or info.account_id != account_id:
                raise BlobNotFound(blob_id)
            await conn.execute(
                "UPDATE blobs SET complete = TRUE, sha256 = %s WHERE blob_id = %s AND NOT complete", (sha256, blob_id)
            )
            return await _blob(conn, blob_id, live_after_ms, lock=False)

    async def delete_blob(self, blob_id: str, account_id: str) -> bool:
        async with self._tx() as conn:
            cur = await conn.execute("DELETE FROM blobs WHERE blob_id = %s AND account_id = %s", (blob_id, account_id))
            if cur.rowcount == 0:
                return False
            await conn.execute("DELETE FROM blob_parts WHERE blob_id = %s", (blob_id,))
            return True

    async def expired_blobs(self, live_after_ms: int, limit: int) -> list[str]:
        async with self._tx() as conn:
            cur = await conn.execute(
                "SELECT blob_id FROM blobs WHERE created_at <= %s ORDER BY created_at LIMIT %s", (live_after_ms, limit)
            )
            return [r[0] for r in await cur.fetchall()]

    async def delete_blobs(self, blob_ids: Sequence[str]) -> int:
        ids = list(dict.fromkeys(blob_ids))
        if not ids:
            return 0
        async with self._tx() as conn:
            cur = await conn.execute("DELETE FROM blobs WHERE blob_id = ANY(%s)", (ids,))
            deleted = cur.rowcount
            await conn.execute("DELETE FROM blob_parts WHERE blob_id = ANY(%s)", (ids,))
            return deleted

    # backups

    async def put_backup(self, account_id: str, access_hash: bytes, blob_id: str, size: int, now_ms: int) -> str | None:
        try:
            async with self._tx() as conn:
                cur = await conn.execute("SELECT blob_id FROM backups WHERE account_id = %s FOR UPDATE", (account_id,))
                old = await cur.fetchone()
                await conn.execute(
                    "INSERT INTO backups VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (account_id)"
                    " DO UPDATE SET access_hash = EXCLUDED.access_hash, blob_id = EXCLUDED.blob_id,"
                    " size = EXCLUDED.size, updated_at = EXCLUDED.updated_at",
                    (account_id, access_hash, blob_id, size, now_ms, now_ms),
                )
        except pg_errors.UniqueViolation:
            raise StorageConflict("backup_access_taken") from None
        return None if old is None else old[0]

    async def get_backup(self, account_id: str) -> BackupInfo | None:
        row = await self._one(
            "SELECT account_id, blob_id, size, created_at, updated_at FROM backups WHERE account_id = %s", (account_id,)
        )
        return None if row is None else BackupInfo(*row)

    async def backup_by_access(self, access_hash: bytes) -> BackupInfo | None:
        row = await self._one(
            "SELECT account_id, blob_id, size, created_at, updated_at, access_hash FROM backups WHERE access_hash = %s",
            (access_hash,),
        )
        if row is None or not same_digest(bytes(row[5]), access_hash):
            return None
        return BackupInfo(*row[:5])

    async def delete_backup(self, account_id: str) -> str | None:
        row = await self._one("DELETE FROM backups WHERE account_id = %s RETURNING blob_id", (account_id,))
        return None if row is None else row[0]

    # the privacy report

    async def report_rows(self, query: str, params: Sequence[object]) -> list[tuple]:
        async with self._tx() as conn:
            cur = await conn.execute(query.replace("?", "%s"), tuple(params))
            return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in await cur.fetchall()]

    # profiles

    async def put_profile(self, account_id: str, key_id: bytes, revision: int, body: bytes, now_ms: int) -> bool:
        async with self._tx() as conn:
            cur = await conn.execute(
                "INSERT INTO profiles VALUES (%s, %s, %s, %s, %s) ON CONFLICT (account_id) DO UPDATE"
                " SET key_id = excluded.key_id, revision = excluded.revision, body = excluded.body,"
                " updated_at = excluded.updated_at WHERE profiles.revision <= excluded.revision",
                (account_id, key_id, revision, body, now_ms),
            )
            return cur.rowcount == 1

    async def get_profile(self, account_id: str) -> tuple[bytes, bytes] | None:
        row = await self._one("SELECT key_id, body FROM profiles WHERE account_id = %s", (account_id,))
        return (bytes(row[0]), bytes(row[1])) if row else None

    # sealed sender

    async def get_sealed_access(self, account_id: str) -> tuple[bytes | None, bool]:
        row = await self._one(
            "SELECT access_verifier, allow_anyone FROM sealed_access WHERE account_id = %s", (account_id,)
        )
        if row is None:
            return None, False
        return (bytes(row[0]) if row[0] is not None else None), bool(row[1])

    async def set_sealed_access(self, account_id: str, verifier: bytes | None, allow_anyone: bool) -> None:
        async with self._tx() as conn:
            await conn.execute(
                "INSERT INTO sealed_access (account_id, access_verifier, allow_anyone)"
                " VALUES (%s, %s, %s) ON CONFLICT (account_id) DO UPDATE SET"
                " access_verifier = COALESCE(EXCLUDED.access_verifier,"
                " sealed_access.access_verifier), allow_anyone = EXCLUDED.allow_anyone",
                (account_id, verifier, allow_anyone),
            )


async def _blob(conn: psycopg.AsyncConnection, blob_id: str, live_after_ms: int, lock: bool) -> BlobInfo | None:
    cur = await conn.execute(
        "SELECT account_id, size, part_size, created_at, complete, sha256 FROM blobs"
        " WHERE blob_id = %s AND created_at > %s" + (" FOR SHARE" if lock else ""),
        (blob_id, live_after_ms),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    cur = await conn.execute("SELECT idx FROM blob_parts WHERE blob_id = %s ORDER BY idx", (blob_id,))
    received = tuple(r[0] for r in await cur.fetchall())
    return BlobInfo(
        blob_id,
        row[0],
        int(row[1]),
        int(row[2]),
        int(row[3]),
        bool(row[4]),
        None if row[5] is None else bytes(row[5]),
        received,
    )


async def _live_channel(conn: psycopg.AsyncConnection, channel: str, now_ms: int, lock: bool) -> None:
    cur = await conn.execute(
        "SELECT expires_at FROM provisioning_channels WHERE channel = %s" + (" FOR UPDATE" if lock else ""), (channel,)
    )
    row = await cur.fetchone()
    if row is None or row[0] <= now_ms:
        raise ChannelNotFound(channel)


async def _counts(conn: psycopg.AsyncConnection, account_id: str, device_id: int) -> KeyCounts:
    cur = await conn.execute(
        "SELECT kind, count(*) FROM one_time_prekeys WHERE account_id = %s AND device_id = %s GROUP BY kind",
        (account_id, device_id),
    )
    counts = dict(await cur.fetchall())
    return KeyCounts(counts.get("x25519", 0), counts.get("kem", 0))


async def _take_bundle(conn: psycopg.AsyncConnection, account_id: str, device_id: int) -> Bundle | None:
    cur = await conn.execute(
        "SELECT kind, key_id, public_key, signature FROM signed_prekeys WHERE account_id = %s AND device_id = %s",
        (account_id, device_id),
    )
    signed = {kind: SignedKey(key_id, bytes(pk), bytes(sig)) for kind, key_id, pk, sig in await cur.fetchall()}
    if "x25519" not in signed:
        return None
    taken: dict[str, OneTimeKey] = {}
    for kind in ("x25519", "kem"):
        cur = await conn.execute(
            "DELETE FROM one_time_prekeys WHERE (account_id, device_id, kind, key_id) = ("
            " SELECT account_id, device_id, kind, key_id FROM one_time_prekeys"
            " WHERE account_id = %s AND device_id = %s AND kind = %s"
            " ORDER BY key_id LIMIT 1 FOR UPDATE SKIP LOCKED)"
            " RETURNING key_id, public_key, signature",
            (account_id, device_id, kind),
        )
        row = await cur.fetchone()
        if row is not None:
            taken[kind] = OneTimeKey(row[0], bytes(row[1]), bytes(row[2]) if row[2] is not None else None)
    kem_one_time = taken.get("kem")
    if kem_one_time is not None and kem_one_time.signature is not None:
        kem = SignedKey(kem_one_time.key_id, kem_one_time.public_key, kem_one_time.signature)
        last_resort = False
    else:
        kem = signed.get("kem")
        last_resort = kem is not None
    return Bundle(device_id, signed["x25519"], taken.get("x25519"), kem, last_resort)
