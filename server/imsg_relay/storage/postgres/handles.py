"""Reachable handles (blinded) and discovery buckets: the same table and rules as
storage/sqlite/handles.py. An "unverified" claim and a verification both lock the tag first
(an advisory transaction lock on its hash), so two accounts cannot both end up holding one
handle.
"""

from __future__ import annotations

from typing import Any

from imsg_relay.storage.base import HandleRow, StorageConflict
from imsg_relay.storage.postgres.database import Database

_COLUMNS = "tag, account_id, state, receiving, label, created_at, record, code_hash, code_expires_at, code_tries"


def _row(r: Any) -> HandleRow:
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


async def _lock_tag(conn: Any, tag: bytes) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (int.from_bytes(tag[:8], "big", signed=True),))


async def insert_handle(conn: Any, row: HandleRow, max_handles: int | None) -> None:
    """In the caller's transaction; raises before writing anything."""
    await _lock_tag(conn, row.tag)
    if row.state == "unverified":
        cur = await conn.execute(
            "SELECT 1 FROM handles WHERE tag = %s AND account_id <> %s AND state <> 'pending'",
            (row.tag, row.account_id),
        )
        if await cur.fetchone():
            raise StorageConflict("handle_taken")
    if max_handles is not None:
        cur = await conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE tag = %s) FROM handles WHERE account_id = %s",
            (row.tag, row.account_id),
        )
        total, same = await cur.fetchone()
        if not same and total >= max_handles:
            raise StorageConflict("too_many_handles")
    await conn.execute(
        f"INSERT INTO handles (bucket, {_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (account_id, tag) DO UPDATE SET state = EXCLUDED.state, receiving = EXCLUDED.receiving,"
        " label = EXCLUDED.label, record = EXCLUDED.record, code_hash = EXCLUDED.code_hash,"
        " code_expires_at = EXCLUDED.code_expires_at, code_tries = EXCLUDED.code_tries",
        (
            row.bucket,
            row.tag,
            row.account_id,
            row.state,
            row.receiving,
            row.label,
            row.created_at,
            row.record,
            row.code_hash,
            row.code_expires_at,
            row.code_tries,
        ),
    )


async def put_handle(db: Database, row: HandleRow, max_handles: int) -> HandleRow:
    async with db.tx() as conn:
        await insert_handle(conn, row, max_handles)
    return row


async def get_handle(db: Database, account_id: str, tag: bytes) -> HandleRow | None:
    r = await db.one(f"SELECT {_COLUMNS} FROM handles WHERE account_id = %s AND tag = %s", (account_id, tag))
    return _row(r) if r else None


async def wrong_code(db: Database, account_id: str, tag: bytes, max_tries: int) -> int:
    async with db.tx() as conn:
        cur = await conn.execute(
            "UPDATE handles SET code_tries = code_tries + 1 WHERE account_id = %s AND tag = %s RETURNING code_tries",
            (account_id, tag),
        )
        r = await cur.fetchone()
        tries = r[0] if r else max_tries
        if tries >= max_tries:
            await conn.execute(
                "UPDATE handles SET code_hash = NULL, code_expires_at = 0 WHERE account_id = %s AND tag = %s",
                (account_id, tag),
            )
    return max(0, max_tries - tries)


async def verify_handle(db: Database, account_id: str, tag: bytes, record: bytes) -> None:
    async with db.tx() as conn:
        await _lock_tag(conn, tag)
        await conn.execute(
            "DELETE FROM handles WHERE tag = %s AND account_id <> %s AND state <> 'pending'", (tag, account_id)
        )
        await conn.execute(
            "UPDATE handles SET state = 'verified', record = %s, code_hash = NULL, code_expires_at = 0,"
            " code_tries = 0 WHERE account_id = %s AND tag = %s",
            (record, account_id, tag),
        )


async def account_handles(db: Database, account_id: str) -> list[HandleRow]:
    async with db.tx() as conn:
        cur = await conn.execute(
            f"SELECT {_COLUMNS} FROM handles WHERE account_id = %s ORDER BY created_at, tag", (account_id,)
        )
        return [_row(r) for r in await cur.fetchall()]


async def update_handle(
    db: Database, account_id: str, tag: bytes, receiving: bool | None, label: bytes | None
) -> HandleRow | None:
    async with db.tx() as conn:
        if receiving is not None:
            await conn.execute(
                "UPDATE handles SET receiving = %s WHERE account_id = %s AND tag = %s", (receiving, account_id, tag)
            )
        if label is not None:
            await conn.execute(
                "UPDATE handles SET label = %s WHERE account_id = %s AND tag = %s", (label, account_id, tag)
            )
    return await get_handle(db, account_id, tag)


async def remove_handle(db: Database, account_id: str, tag: bytes) -> bool:
    async with db.tx() as conn:
        cur = await conn.execute("DELETE FROM handles WHERE account_id = %s AND tag = %s", (account_id, tag))
        return cur.rowcount > 0


async def discovery_bucket(db: Database, low: int, high: int) -> list[tuple[bytes, bytes]]:
    async with db.tx() as conn:
        cur = await conn.execute(
            "SELECT tag, record FROM handles WHERE bucket BETWEEN %s AND %s AND receiving"
            " AND state <> 'pending' ORDER BY tag",
            (low, high),
        )
        return [(bytes(t), bytes(r)) for t, r in await cur.fetchall()]


async def discoverable_count(db: Database) -> int:
    row = await db.one("SELECT count(*) FROM handles WHERE receiving AND state <> 'pending'", ())
    return int(row[0])
