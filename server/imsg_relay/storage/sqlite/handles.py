"""Reachable handles (blinded) and discovery buckets: the SQL, as functions over a
connection. A discovery read is an index range scan of `bucket` that names no handle and
no reader; only "verified" or "unverified" rows that receive are served.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from imsg_relay.storage.base import HandleRow, StorageConflict

_COLUMNS = "tag, account_id, state, receiving, label, created_at, record, code_hash, code_expires_at, code_tries"


def _row(r: Sequence[Any]) -> HandleRow:
    return HandleRow(
        bytes(r[0]),
        r[1],
        r[2],
        bool(r[3]),
        bytes(r[4]),
        r[5],
        bytes(r[6]),
        bytes(r[7]) if r[7] is not None else None,
        r[8],
        r[9],
    )


def insert_handle(conn: sqlite3.Connection, row: HandleRow, max_handles: int | None) -> None:
    """In the caller's transaction; raises before writing anything."""
    if (
        row.state == "unverified"
        and conn.execute(
            "SELECT 1 FROM handles WHERE tag = ? AND account_id != ? AND state != 'pending'", (row.tag, row.account_id)
        ).fetchone()
    ):
        raise StorageConflict("handle_taken")
    if (
        max_handles is not None
        and not conn.execute(
            "SELECT 1 FROM handles WHERE account_id = ? AND tag = ?", (row.account_id, row.tag)
        ).fetchone()
        and conn.execute("SELECT count(*) FROM handles WHERE account_id = ?", (row.account_id,)).fetchone()[0]
        >= max_handles
    ):
        raise StorageConflict("too_many_handles")
    conn.execute(
        f"INSERT OR REPLACE INTO handles (bucket, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            row.bucket,
            row.tag,
            row.account_id,
            row.state,
            int(row.receiving),
            row.label,
            row.created_at,
            row.record,
            row.code_hash,
            row.code_expires_at,
            row.code_tries,
        ),
    )


def get_handle(conn: sqlite3.Connection, account_id: str, tag: bytes) -> HandleRow | None:
    r = conn.execute(f"SELECT {_COLUMNS} FROM handles WHERE account_id = ? AND tag = ?", (account_id, tag)).fetchone()
    return _row(r) if r else None


def wrong_code(conn: sqlite3.Connection, account_id: str, tag: bytes, max_tries: int) -> int:
    conn.execute("UPDATE handles SET code_tries = code_tries + 1 WHERE account_id = ? AND tag = ?", (account_id, tag))
    r = conn.execute("SELECT code_tries FROM handles WHERE account_id = ? AND tag = ?", (account_id, tag)).fetchone()
    tries = r[0] if r else max_tries
    if tries >= max_tries:
        conn.execute(
            "UPDATE handles SET code_hash = NULL, code_expires_at = 0 WHERE account_id = ? AND tag = ?",
            (account_id, tag),
        )
    return max(0, max_tries - tries)


def verify_handle(conn: sqlite3.Connection, account_id: str, tag: bytes, record: bytes) -> None:
    conn.execute("DELETE FROM handles WHERE tag = ? AND account_id != ? AND state != 'pending'", (tag, account_id))
    conn.execute(
        "UPDATE handles SET state = 'verified', record = ?, code_hash = NULL,"
        " code_expires_at = 0, code_tries = 0 WHERE account_id = ? AND tag = ?",
        (record, account_id, tag),
    )


def account_handles(conn: sqlite3.Connection, account_id: str) -> list[HandleRow]:
    return [
        _row(r)
        for r in conn.execute(
            f"SELECT {_COLUMNS} FROM handles WHERE account_id = ? ORDER BY created_at, tag", (account_id,)
        )
    ]


def discovery_bucket(conn: sqlite3.Connection, low: int, high: int) -> list[tuple[bytes, bytes]]:
    return [
        (bytes(t), bytes(r))
        for t, r in conn.execute(
            "SELECT tag, record FROM handles WHERE bucket BETWEEN ? AND ? AND receiving = 1"
            " AND state != 'pending' ORDER BY tag",
            (low, high),
        )
    ]


def discoverable_count(conn: sqlite3.Connection) -> int:
    count: int = conn.execute("SELECT count(*) FROM handles WHERE receiving = 1 AND state != 'pending'").fetchone()[0]
    return count


def update_handle(
    conn: sqlite3.Connection, account_id: str, tag: bytes, receiving: bool | None, label: bytes | None
) -> None:
    if receiving is not None:
        conn.execute(
            "UPDATE handles SET receiving = ? WHERE account_id = ? AND tag = ?",
            (int(receiving), account_id, tag),
        )
    if label is not None:
        conn.execute("UPDATE handles SET label = ? WHERE account_id = ? AND tag = ?", (label, account_id, tag))


def remove_handle(conn: sqlite3.Connection, account_id: str, tag: bytes) -> bool:
    return conn.execute("DELETE FROM handles WHERE account_id = ? AND tag = ?", (account_id, tag)).rowcount > 0
