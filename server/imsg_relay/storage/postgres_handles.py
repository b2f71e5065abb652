"""PostgreSQL storage of reachable handles (blinded) and discovery buckets: a mixin of
PostgresStorage with the same table and rules as storage/sqlite_handles.py.

An "unverified" claim and a verification both lock the tag first (an advisory transaction
lock on its hash), so two accounts cannot both end up holding one handle.
"""

from __future__ import annotations

from typing import Any

from imsg_relay.storage.base import HandleRow, StorageConflict

SCHEMA = """
ALTER TABLE accounts DROP COLUMN IF EXISTS handle_hmac;
CREATE TABLE IF NOT EXISTS handles (
    tag             BYTEA NOT NULL,
    account_id      TEXT NOT NULL,
    bucket          INTEGER NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'verified', 'unverified')),
    receiving       BOOLEAN NOT NULL DEFAULT TRUE,
    label           BYTEA NOT NULL,
    record          BYTEA NOT NULL,
    created_at      BIGINT NOT NULL,
    code_hash       BYTEA,
    code_expires_at BIGINT NOT NULL DEFAULT 0,
    code_tries      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, tag)
);
CREATE INDEX IF NOT EXISTS handles_tag ON handles (tag);
CREATE INDEX IF NOT EXISTS handles_bucket ON handles (bucket) WHERE receiving AND state <> 'pending';
"""

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


class PostgresHandles:
    async def put_handle(self, row: HandleRow, max_handles: int) -> HandleRow:
        async with self._tx() as conn:
            await insert_handle(conn, row, max_handles)
        return row

    async def get_handle(self, account_id: str, tag: bytes) -> HandleRow | None:
        r = await self._one(f"SELECT {_COLUMNS} FROM handles WHERE account_id = %s AND tag = %s", (account_id, tag))
        return _row(r) if r else None

    async def wrong_code(self, account_id: str, tag: bytes, max_tries: int) -> int:
        async with self._tx() as conn:
            cur = await conn.execute(
                "UPDATE handles SET code_tries = code_tries + 1 WHERE account_id = %s AND tag = %s"
                " RETURNING code_tries",
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

    async def verify_handle(self, account_id: str, tag: bytes, record: bytes) -> None:
        async with self._tx() as conn:
            await _lock_tag(conn, tag)
            await conn.execute(
                "DELETE FROM handles WHERE tag = %s AND account_id <> %s AND state <> 'pending'", (tag, account_id)
            )
            await conn.execute(
                "UPDATE handles SET state = 'verified', record = %s, code_hash = NULL, code_expires_at = 0,"
                " code_tries = 0 WHERE account_id = %s AND tag = %s",
                (record, account_id, tag),
            )

    async def account_handles(self, account_id: str) -> list[HandleRow]:
        async with self._tx() as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM handles WHERE account_id = %s ORDER BY created_at, tag", (account_id,)
            )
            return [_row(r) for r in await cur.fetchall()]

    async def update_handle(
        self, account_id: str, tag: bytes, receiving: bool | None, label: bytes | None
    ) -> HandleRow | None:
        async with self._tx() as conn:
            if receiving is not None:
                await conn.execute(
                    "UPDATE handles SET receiving = %s WHERE account_id = %s AND tag = %s", (receiving, account_id, tag)
                )
            if label is not None:
                await conn.execute(
                    "UPDATE handles SET label = %s WHERE account_id = %s AND tag = %s", (label, account_id, tag)
                )
        return await self.get_handle(account_id, tag)

    async def remove_handle(self, account_id: str, tag: bytes) -> bool:
        async with self._tx() as conn:
            cur = await conn.execute("DELETE FROM handles WHERE account_id = %s AND tag = %s", (account_id, tag))
            return cur.rowcount > 0

    async def discovery_bucket(self, low: int, high: int) -> list[tuple[bytes, bytes]]:
        async with self._tx() as conn:
            cur = await conn.execute(
                "SELECT tag, record FROM handles WHERE bucket BETWEEN %s AND %s AND receiving"
                " AND state <> 'pending' ORDER BY tag",
                (low, high),
            )
            return [(bytes(t), bytes(r)) for t, r in await cur.fetchall()]

    async def discoverable_count(self) -> int:
        row = await self._one("SELECT count(*) FROM handles WHERE receiving AND state <> 'pending'", ())
        return int(row[0])
