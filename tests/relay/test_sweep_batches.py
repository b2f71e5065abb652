"""Retention sweep of 100,000 queued expired envelopes (SECURITY-TESTS R4), on SQLite and
PostgreSQL: it deletes them all in batches of at most SWEEP_BATCH, keeps the live ones,
and sends keep being stored while it runs (they are committed between batches, not queued
behind the whole purge). The latency figure comes from scripts/bench_sweep, not from here.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3

import pytest

from imsg_relay.storage.sqlite import SQLiteStorage
from imsg_relay.sweeper import SWEEP_BATCH, sweep

from .test_postgres import PG, pg_reason

ROWS = 100_000
CUTOFF = 5_000_000
ACCOUNT = "a" * 32


def _fill_sqlite(path) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany(
            "INSERT INTO envelopes (account_id, device_id, message_id, body, received_at) VALUES (?, 1, ?, ?, ?)",
            ((ACCOUNT, f"{i:032x}", b"\x00" * 64, 1_000 + i) for i in range(ROWS)),
        )
    conn.close()


def _fill_postgres(schema: str) -> None:
    import psycopg

    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        conn.execute(
            "INSERT INTO envelopes (account_id, device_id, message_id, body, received_at)"
            " SELECT %s, 1, lpad(to_hex(g), 32, '0'), decode(repeat('00', 64), 'hex'), 1000 + g"
            " FROM generate_series(0, %s - 1) g",
            (ACCOUNT, ROWS),
        )


async def _sweep_while_sending(storage) -> tuple[list[int], int, int, int]:
    """Sweep with a sender running; returns (batch sizes, sends done during the sweep,
    envelopes left, live envelopes stored)."""
    await storage.create_account(ACCOUNT, b"\x06" + bytes(32), None, b"list", 1, secrets.token_bytes(32), 0)
    batches: list[int] = []
    real = storage.delete_expired

    async def counted(cutoff_ms: int, limit: int) -> int:
        n = await real(cutoff_ms, limit)
        batches.append(n)
        return n

    storage.delete_expired = counted
    done = asyncio.Event()
    sent_during = 0

    async def sender() -> None:
        nonlocal sent_during
        while not done.is_set():
            await storage.store_envelopes(ACCOUNT, secrets.token_hex(16), {1: b"live"}, None, CUTOFF + 1)
            if not done.is_set():
                sent_during += 1
            await asyncio.sleep(0.002)

    task = asyncio.create_task(sender())
    await asyncio.sleep(0.01)
    deleted = await sweep(storage, CUTOFF)
    done.set()
    await task
    assert deleted == ROWS
    left = await storage.report_rows("SELECT count(*) FROM envelopes WHERE received_at < ?", (CUTOFF,))
    live = await storage.report_rows("SELECT count(*) FROM envelopes WHERE received_at >= ?", (CUTOFF,))
    return batches, sent_during, left[0][0], live[0][0]


def _check(batches, sent_during, left, live) -> None:
    assert left == 0
    assert all(n <= SWEEP_BATCH for n in batches) and sum(batches) == ROWS
    assert len(batches) == ROWS // SWEEP_BATCH + 1  # the last, short batch says "done"
    # Sends were stored while the purge ran, not after it: they interleave with batches.
    assert sent_during >= 5 and live >= sent_during


def test_sweep_of_100k_on_sqlite_runs_in_batches_beside_sends(tmp_path):
    async def body():
        storage = SQLiteStorage(tmp_path)
        await storage.open()
        try:
            _fill_sqlite(tmp_path / "relay.db")
            return await _sweep_while_sending(storage)
        finally:
            await storage.close()

    _check(*asyncio.run(body()))


@pytest.mark.postgres
@pytest.mark.skipif(pg_reason is not None, reason=pg_reason or "")
def test_sweep_of_100k_on_postgres_runs_in_batches_beside_sends():
    import psycopg

    from imsg_relay.storage.postgres import PostgresStorage

    schema = f"imsg_test_{secrets.token_hex(6)}"

    async def body():
        storage = PostgresStorage(PG, schema=schema, pool_size=4)
        await storage.open()
        try:
            _fill_postgres(schema)
            return await _sweep_while_sending(storage)
        finally:
            await storage.close()

    try:
        _check(*asyncio.run(body()))
    finally:
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
