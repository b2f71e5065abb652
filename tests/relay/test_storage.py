"""What only SQLiteStorage has: its database file (columns, WAL, mode 0600) and its
group-commit writer. Every Storage method is checked on SQLite and PostgreSQL alike in
test_storage_conformance.py."""

from __future__ import annotations

import asyncio
import sqlite3
import stat

import pytest

from imsg_relay.storage.base import DeviceRef, HandleRow
from imsg_relay.storage.sqlite import SQLiteStorage


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
