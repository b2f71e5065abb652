"""Attachment blob metadata and backups (their bytes are in the blob store), and the
privacy report's read-only queries: the SQL, each operation one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from imsg_relay.auth import same_digest
from imsg_relay.storage.base import BackupInfo, BlobInfo, BlobNotFound, BlobQuotaExceeded, StorageConflict
from imsg_relay.storage.postgres.database import Database, one_row


async def create_blob(
    db: Database, blob_id: str, account_id: str, size: int, part_size: int, now_ms: int, live_after_ms: int, quota: int
) -> None:
    try:
        async with db.tx() as conn:
            # Serialise creation per account, so concurrent uploads cannot pass the quota.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("blobs:" + account_id,))
            cur = await conn.execute(
                "SELECT coalesce(sum(size), 0) FROM blobs WHERE account_id = %s AND created_at > %s",
                (account_id, live_after_ms),
            )
            used = int((await one_row(cur))[0])
            if used + size > quota:
                raise BlobQuotaExceeded(used)
            await conn.execute(
                "INSERT INTO blobs (blob_id, account_id, size, part_size, created_at) VALUES (%s, %s, %s, %s, %s)",
                (blob_id, account_id, size, part_size, now_ms),
            )
    except pg_errors.UniqueViolation:
        raise StorageConflict("blob_exists") from None


async def get_blob(db: Database, blob_id: str, live_after_ms: int) -> BlobInfo | None:
    async with db.tx() as conn:
        return await _blob(conn, blob_id, live_after_ms, lock=False)


async def add_blob_part(db: Database, blob_id: str, account_id: str, index: int, live_after_ms: int) -> BlobInfo:
    async with db.tx() as conn:
        # FOR SHARE: a concurrent complete waits for this part, or this part sees it.
        info = await _own_blob(conn, blob_id, account_id, live_after_ms, lock=True)
        if info.complete:
            raise StorageConflict("blob_complete")
        await conn.execute("INSERT INTO blob_parts VALUES (%s, %s) ON CONFLICT DO NOTHING", (blob_id, index))
        return await _own_blob(conn, blob_id, account_id, live_after_ms, lock=False)


async def complete_blob(db: Database, blob_id: str, account_id: str, sha256: bytes, live_after_ms: int) -> BlobInfo:
    async with db.tx() as conn:
        await _own_blob(conn, blob_id, account_id, live_after_ms, lock=False)
        await conn.execute(
            "UPDATE blobs SET complete = TRUE, sha256 = %s WHERE blob_id = %s AND NOT complete", (sha256, blob_id)
        )
        return await _own_blob(conn, blob_id, account_id, live_after_ms, lock=False)


async def delete_blob(db: Database, blob_id: str, account_id: str) -> bool:
    async with db.tx() as conn:
        cur = await conn.execute("DELETE FROM blobs WHERE blob_id = %s AND account_id = %s", (blob_id, account_id))
        if cur.rowcount == 0:
            return False
        await conn.execute("DELETE FROM blob_parts WHERE blob_id = %s", (blob_id,))
        return True


async def expired_blobs(db: Database, live_after_ms: int, limit: int) -> list[str]:
    async with db.tx() as conn:
        cur = await conn.execute(
            "SELECT blob_id FROM blobs WHERE created_at <= %s ORDER BY created_at LIMIT %s", (live_after_ms, limit)
        )
        return [r[0] for r in await cur.fetchall()]


async def delete_blobs(db: Database, blob_ids: Sequence[str]) -> int:
    ids = list(dict.fromkeys(blob_ids))
    if not ids:
        return 0
    async with db.tx() as conn:
        cur = await conn.execute("DELETE FROM blobs WHERE blob_id = ANY(%s)", (ids,))
        deleted = cur.rowcount
        await conn.execute("DELETE FROM blob_parts WHERE blob_id = ANY(%s)", (ids,))
        return deleted


async def put_backup(
    db: Database, account_id: str, access_hash: bytes, blob_id: str, size: int, now_ms: int
) -> str | None:
    try:
        async with db.tx() as conn:
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


async def get_backup(db: Database, account_id: str) -> BackupInfo | None:
    row = await db.one(
        "SELECT account_id, blob_id, size, created_at, updated_at FROM backups WHERE account_id = %s", (account_id,)
    )
    return None if row is None else BackupInfo(*row)


async def backup_by_access(db: Database, access_hash: bytes) -> BackupInfo | None:
    row = await db.one(
        "SELECT account_id, blob_id, size, created_at, updated_at, access_hash FROM backups WHERE access_hash = %s",
        (access_hash,),
    )
    if row is None or not same_digest(bytes(row[5]), access_hash):
        return None
    return BackupInfo(*row[:5])


async def delete_backup(db: Database, account_id: str) -> str | None:
    row = await db.one("DELETE FROM backups WHERE account_id = %s RETURNING blob_id", (account_id,))
    return None if row is None else row[0]


async def report_rows(db: Database, query: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
    async with db.tx() as conn:
        cur = await conn.execute(query.replace("?", "%s"), tuple(params))
        return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in await cur.fetchall()]


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


async def _own_blob(
    conn: psycopg.AsyncConnection[Any], blob_id: str, account_id: str, live_after_ms: int, lock: bool
) -> BlobInfo:
    """The live blob `account_id` uploaded; BlobNotFound for any other."""
    info = await _blob(conn, blob_id, live_after_ms, lock=lock)
    if info is None or info.account_id != account_id:
        raise BlobNotFound(blob_id)
    return info
