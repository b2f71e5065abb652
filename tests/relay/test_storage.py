"""SQLiteStorage on its own, and what the database file may and may not hold."""

from __future__ import annotations

import asyncio
import sqlite3
import stat

import pytest

from imsg_relay.storage.base import AccountNotFound, DeviceMismatch, DeviceRef, HandleRow, StorageConflict
from imsg_relay.storage.sqlite import SQLiteStorage
from imsg_relay.sweeper import sweep


def run(coro):
    return asyncio.run(coro)


async def _with_storage(path, fn):
    storage = SQLiteStorage(path)
    await storage.open()
    try:
        return await fn(storage)
    finally:
        await storage.close()


async def _account(storage, account_id="a" * 32, devices=(1,), handle=b"h" * 32):
    first, *rest = devices
    row = HandleRow(handle, account_id, "unverified", True, b"label", 0, b"record")
    await storage.create_account(
        account_id, b"\x06" + bytes(32), row, b"list", first, account_id.encode()[:8] + bytes([first]) * 24, 0
    )
    for d in rest:
        await storage.add_device(account_id, d, account_id.encode()[:8] + bytes([d]) * 24, b"list", 0)


def test_schema_has_unique_mailbox_message_and_no_sender(tmp_path):
    run(_with_storage(tmp_path, lambda s: asyncio.sleep(0)))
    conn = sqlite3.connect(tmp_path / "relay.db")
    columns = [r[1] for r in conn.execute("PRAGMA table_info(envelopes)")]
    assert columns == ["seq", "account_id", "device_id", "message_id", "body", "received_at"]
    assert not any("sender" in c or "from" in c for c in columns)
    indexes = {r[1]: r[2] for r in conn.execute("PRAGMA index_list(envelopes)")}
    unique = [name for name, is_unique in indexes.items() if is_unique]
    [cols] = [[r[2] for r in conn.execute(f"PRAGMA index_info({name})")] for name in unique]
    assert cols == ["account_id", "device_id", "message_id"]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    mode = stat.S_IMODE((tmp_path / "relay.db").stat().st_mode)
    assert mode & 0o077 == 0


def test_conflicts_and_idempotent_store(tmp_path):
    async def body(s):
        await _account(s, devices=(1, 2))
        with pytest.raises(StorageConflict) as e:
            await _account(s)
        assert e.value.code == "account_exists"
        with pytest.raises(StorageConflict) as e:
            await _account(s, account_id="b" * 32)
        assert e.value.code == "handle_taken"
        with pytest.raises(DeviceMismatch) as e:
            await s.store_envelopes("a" * 32, "m" * 32, {1: b"x", 3: b"y"}, None, 1)
        assert (e.value.missing, e.value.extra) == ([2], [3])
        with pytest.raises(AccountNotFound):
            await s.store_envelopes("c" * 32, "m" * 32, {1: b"x"}, None, 1)
        results = await asyncio.gather(
            *[s.store_envelopes("a" * 32, "m" * 32, {1: b"x", 2: b"y"}, None, 1) for _ in range(3)]
        )
        assert results == [2, 2, 2]
        msgs, more = await s.fetch(DeviceRef("a" * 32, 1), 10, 0, 1 << 20)
        assert [m.message_id for m in msgs] == ["m" * 32] and not more

    run(_with_storage(tmp_path, body))


def test_group_commit_shares_transactions(tmp_path):
    async def body(s):
        await _account(s)
        await asyncio.gather(*[s.store_envelopes("a" * 32, f"{i:032x}", {1: b"x"}, None, 1) for i in range(300)])
        groups, ops = s.group_stats
        assert ops >= 301
        assert groups < ops / 5  # concurrent writes were committed together
        msgs, more = await s.fetch(DeviceRef("a" * 32, 1), 500, 0, 1 << 30)
        assert len(msgs) == 300

    run(_with_storage(tmp_path, body))


def test_a_bug_in_one_write_fails_its_group_but_not_the_writer(tmp_path):
    """An operation raising something unexpected (a bug, not a refusal) rolls its group
    back, reaches its caller, and leaves the writer thread serving later writes: before,
    the thread died and every later caller waited forever."""

    async def body(s):
        await _account(s)

        def half_then_bug(conn):
            conn.execute("DELETE FROM devices")  # must be rolled back
            raise TypeError("bug")

        with pytest.raises(TypeError):
            await asyncio.wait_for(s._write(half_then_bug), 10)
        # The writer is alive and the half-done delete did not commit.
        await asyncio.wait_for(s.store_envelopes("a" * 32, "1" * 32, {1: b"x"}, None, 1), 10)
        msgs, _ = await s.fetch(DeviceRef("a" * 32, 1), 10, 0, 1 << 30)
        assert len(msgs) == 1

    run(_with_storage(tmp_path, body))


def test_fetch_filters_rows_older_than_the_cutoff(tmp_path):
    async def body(s):
        await _account(s)
        await s.store_envelopes("a" * 32, "1" * 32, {1: b"old"}, None, 1_000)
        await s.store_envelopes("a" * 32, "2" * 32, {1: b"new"}, None, 5_000)
        msgs, _ = await s.fetch(DeviceRef("a" * 32, 1), 10, 2_000, 1 << 20)
        assert [m.body for m in msgs] == [b"new"]

    run(_with_storage(tmp_path, body))


def test_sweep_deletes_expired_in_batches(tmp_path):
    calls = []

    async def body(s):
        await _account(s)
        for i in range(25):
            await s.store_envelopes("a" * 32, f"{i:032x}", {1: b"x"}, None, 1_000 + i)
        await s.store_envelopes("a" * 32, "f" * 32, {1: b"keep"}, None, 10_000)
        original = s.delete_expired

        async def counting(cutoff, limit):
            n = await original(cutoff, limit)
            calls.append((limit, n))
            return n

        s.delete_expired = counting
        assert await sweep(s, cutoff_ms=5_000, batch=10) == 25
        assert calls == [(10, 10), (10, 10), (10, 5)]
        msgs, _ = await s.fetch(DeviceRef("a" * 32, 1), 100, 0, 1 << 20)
        assert [m.body for m in msgs] == [b"keep"]

    run(_with_storage(tmp_path, body))


def test_fetch_caps_response_bytes(tmp_path):
    async def body(s):
        await _account(s)
        for i in range(5):
            await s.store_envelopes("a" * 32, f"{i:032x}", {1: b"x" * 1000}, None, 1)
        msgs, more = await s.fetch(DeviceRef("a" * 32, 1), 100, 0, 2500)
        assert len(msgs) == 2 and more

    run(_with_storage(tmp_path, body))
