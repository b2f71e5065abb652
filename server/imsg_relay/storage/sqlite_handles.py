"""SQLite storage of reachable handles (blinded) and discovery buckets: a mixin of
SQLiteStorage, kept apart so the handle tables have one home.

A row is (tag, account) with the tag's first 16 bits in `bucket`, so a discovery read is an
index range scan that names no handle and no reader. Only "verified" or "unverified" rows
that receive are served; "pending" rows wait for their code.
"""

from __future__ import annotations

import sqlite3

from imsg_relay.storage.base import HandleRow, StorageConflict

SCHEMA = """
CREATE TABLE IF NOT EXISTS handles (
    tag             BLOB NOT NULL,
    account_id      TEXT NOT NULL,
    bucket          INTEGER NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'verified', 'unverified')),
    receiving       INTEGER NOT NULL DEFAULT 1,
    label           BLOB NOT NULL,
    record          BLOB NOT NULL,
    created_at      INTEGER NOT NULL,
    code_hash       BLOB,
    code_expires_at INTEGER NOT NULL DEFAULT 0,
    code_tries      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, tag)
);
CREATE INDEX IF NOT EXISTS handles_tag ON handles (tag);
CREATE INDEX IF NOT EXISTS handles_bucket ON handles (bucket) WHERE receiving = 1 AND state != 'pending';
"""

_COLUMNS = "tag, account_id, state, receiving, label, created_at, record, code_hash, code_expires_at, code_tries"


def _row(r) -> HandleRow:
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


def migrate_accounts(conn: sqlite3.Connection) -> None:
    """Schema 3 kept each account's one handle as HMAC(secret, handle) in
    accounts.handle_hmac (UNIQUE, so it cannot be dropped in place): rebuild the table
    without it. An HMAC cannot become an OPRF tag, so those handles are added again by
    their owners (`imsg reachable add`)."""
    columns = [r[1] for r in conn.execute("PRAGMA table_info(accounts)")]
    if "handle_hmac" not in columns:
        return
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        "CREATE TABLE accounts_v4 (account_id TEXT PRIMARY KEY, account_key BLOB NOT NULL,"
        " device_list BLOB NOT NULL, created_at INTEGER NOT NULL)"
    )
    conn.execute("INSERT INTO accounts_v4 SELECT account_id, account_key, device_list, created_at FROM accounts")
    conn.execute("DROP TABLE accounts")
    conn.execute("ALTER TABLE accounts_v4 RENAME TO accounts")
    conn.execute("COMMIT")


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


class SQLiteHandles:
    async def put_handle(self, row: HandleRow, max_handles: int) -> HandleRow:
        await self._write(lambda conn: insert_handle(conn, row, max_handles))
        return row

    async def get_handle(self, account_id: str, tag: bytes) -> HandleRow | None:
        r = (
            self._read()
            .execute(f"SELECT {_COLUMNS} FROM handles WHERE account_id = ? AND tag = ?", (account_id, tag))
            .fetchone()
        )
        return _row(r) if r else None

    async def wrong_code(self, account_id: str, tag: bytes, max_tries: int) -> int:
        def op(conn: sqlite3.Connection) -> int:
            conn.execute(
                "UPDATE handles SET code_tries = code_tries + 1 WHERE account_id = ? AND tag = ?", (account_id, tag)
            )
            r = conn.execute(
                "SELECT code_tries FROM handles WHERE account_id = ? AND tag = ?", (account_id, tag)
            ).fetchone()
            tries = r[0] if r else max_tries
            if tries >= max_tries:
                conn.execute(
                    "UPDATE handles SET code_hash = NULL, code_expires_at = 0 WHERE account_id = ? AND tag = ?",
                    (account_id, tag),
                )
            return max(0, max_tries - tries)

        return await self._write(op)

    async def verify_handle(self, account_id: str, tag: bytes, record: bytes) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM handles WHERE tag = ? AND account_id != ? AND state != 'pending'", (tag, account_id)
            )
            conn.execute(
                "UPDATE handles SET state = 'verified', record = ?, code_hash = NULL,"
                " code_expires_at = 0, code_tries = 0 WHERE account_id = ? AND tag = ?",
                (record, account_id, tag),
            )

        await self._write(op)

    async def account_handles(self, account_id: str) -> list[HandleRow]:
        return [
            _row(r)
            for r in self._read().execute(
                f"SELECT {_COLUMNS} FROM handles WHERE account_id = ? ORDER BY created_at, tag", (account_id,)
            )
        ]

    async def update_handle(
        self, account_id: str, tag: bytes, receiving: bool | None, label: bytes | None
    ) -> HandleRow | None:
        def op(conn: sqlite3.Connection) -> None:
            if receiving is not None:
                conn.execute(
                    "UPDATE handles SET receiving = ? WHERE account_id = ? AND tag = ?",
                    (int(receiving), account_id, tag),
                )
            if label is not None:
                conn.execute("UPDATE handles SET label = ? WHERE account_id = ? AND tag = ?", (label, account_id, tag))

        await self._write(op)
        return await self.get_handle(account_id, tag)

    async def remove_handle(self, account_id: str, tag: bytes) -> bool:
        return await self._write(
            lambda conn: (
                conn.execute("DELETE FROM handles WHERE account_id = ? AND tag = ?", (account_id, tag)).rowcount > 0
            )
        )

    async def discovery_bucket(self, low: int, high: int) -> list[tuple[bytes, bytes]]:
        return [
            (bytes(t), bytes(r))
            for t, r in self._read().execute(
                "SELECT tag, record FROM handles WHERE bucket BETWEEN ? AND ? AND receiving = 1"
                " AND state != 'pending' ORDER BY tag",
                (low, high),
            )
        ]

    async def discoverable_count(self) -> int:
        return (
            self._read()
            .execute("SELECT count(*) FROM handles WHERE receiving = 1 AND state != 'pending'")
            .fetchone()[0]
        )
