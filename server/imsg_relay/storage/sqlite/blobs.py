"""Attachment blob metadata and backups (their bytes are in the blob store): the SQL, as
functions over a connection. Writes run in the group-commit writer's transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from imsg_relay.auth import same_digest
from imsg_relay.storage.base import BackupInfo, BlobInfo, BlobNotFound, BlobQuotaExceeded, StorageConflict


def create_blob(
    conn: sqlite3.Connection,
    blob_id: str,
    account_id: str,
    size: int,
    part_size: int,
    now_ms: int,
    live_after_ms: int,
    quota: int,
) -> None:
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


def get_blob(conn: sqlite3.Connection, blob_id: str, live_after_ms: int) -> BlobInfo | None:
    return _blob(conn, blob_id, live_after_ms)


def add_blob_part(conn: sqlite3.Connection, blob_id: str, account_id: str, index: int, live_after_ms: int) -> BlobInfo:
    info = _own_blob(conn, blob_id, account_id, live_after_ms)
    if info.complete:
        raise StorageConflict("blob_complete")
    conn.execute("INSERT OR IGNORE INTO blob_parts VALUES (?, ?)", (blob_id, index))
    return _own_blob(conn, blob_id, account_id, live_after_ms)


def complete_blob(
    conn: sqlite3.Connection, blob_id: str, account_id: str, sha256: bytes, live_after_ms: int
) -> BlobInfo:
    _own_blob(conn, blob_id, account_id, live_after_ms)
    conn.execute("UPDATE blobs SET complete = 1, sha256 = ? WHERE blob_id = ? AND complete = 0", (sha256, blob_id))
    return _own_blob(conn, blob_id, account_id, live_after_ms)


def delete_blob(conn: sqlite3.Connection, blob_id: str, account_id: str) -> bool:
    row = conn.execute(
        "DELETE FROM blobs WHERE blob_id = ? AND account_id = ? RETURNING created_at", (blob_id, account_id)
    ).fetchone()
    if row is None:
        return False
    conn.execute("DELETE FROM blob_parts WHERE blob_id = ?", (blob_id,))
    return True


def expired_blobs(conn: sqlite3.Connection, live_after_ms: int, limit: int) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT blob_id FROM blobs WHERE created_at <= ? ORDER BY created_at LIMIT ?", (live_after_ms, limit)
        )
    ]


def delete_blobs(conn: sqlite3.Connection, blob_ids: Sequence[str]) -> int:
    ids = [(b,) for b in dict.fromkeys(blob_ids)]

    before = conn.total_changes
    conn.executemany("DELETE FROM blobs WHERE blob_id = ?", ids)
    deleted = conn.total_changes - before
    conn.executemany("DELETE FROM blob_parts WHERE blob_id = ?", ids)
    return deleted


def put_backup(
    conn: sqlite3.Connection, account_id: str, access_hash: bytes, blob_id: str, size: int, now_ms: int
) -> str | None:
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


def get_backup(conn: sqlite3.Connection, account_id: str) -> BackupInfo | None:
    row = conn.execute(
        "SELECT account_id, blob_id, size, created_at, updated_at FROM backups WHERE account_id = ?",
        (account_id,),
    ).fetchone()
    return None if row is None else BackupInfo(*row)


def backup_by_access(conn: sqlite3.Connection, access_hash: bytes) -> BackupInfo | None:
    row = conn.execute(
        "SELECT account_id, blob_id, size, created_at, updated_at, access_hash FROM backups WHERE access_hash = ?",
        (access_hash,),
    ).fetchone()
    if row is None or not same_digest(bytes(row[5]), access_hash):
        return None
    return BackupInfo(*row[:5])


def delete_backup(conn: sqlite3.Connection, account_id: str) -> str | None:
    row = conn.execute("DELETE FROM backups WHERE account_id = ? RETURNING blob_id", (account_id,)).fetchone()
    return None if row is None else row[0]


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


def _own_blob(conn: sqlite3.Connection, blob_id: str, account_id: str, live_after_ms: int) -> BlobInfo:
    """The live blob `account_id` uploaded; BlobNotFound for any other."""
    info = _blob(conn, blob_id, live_after_ms)
    if info is None or info.account_id != account_id:
        raise BlobNotFound(blob_id)
    return info
