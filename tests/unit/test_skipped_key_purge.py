"""Expired skipped message keys leave every stored session record (current and previous
states) when a store is opened, not only when a session next decrypts: checked by reading
the raw SQLite rows."""

from __future__ import annotations

import sqlite3

from protocol_helpers import T0, ratchet_pair

from imsg.client.facade import Client
from imsg.protocol import session as sess
from imsg.protocol.consts import MAX_SKIPPED_KEY_AGE_MS
from imsg.store.memory import MemoryStore
from imsg.store.sqlite import SQLiteStore

DAY = 24 * 3600 * 1000


def _session_with_gaps(seed: int, at: int) -> tuple[sess.Session, list[bytes]]:
    """A responder session holding skipped keys stored at `at`; returns it and those keys."""
    alice, bob, rng = ratchet_pair(seed)
    msgs = [alice.encrypt(b"m%d" % i, rng) for i in range(4)]
    bob.decrypt(msgs[3], at)  # 0..2 skipped
    keys = [mk for mk, _ in bob.skipped.values()]
    assert len(keys) == 3
    return sess.Session(bob, bytes(32), bytes([seed]) * 32, None), keys


def _raw_records(path) -> list[bytes]:
    db = sqlite3.connect(path)
    try:
        return [row[0] for row in db.execute("SELECT record FROM sessions")]
    finally:
        db.close()


def test_expired_skipped_keys_are_purged_from_every_state_on_open(tmp_path):
    path = tmp_path / "imsg.db"
    store = SQLiteStore(path)
    current, current_keys = _session_with_gaps(1, T0)
    previous, previous_keys = _session_with_gaps(2, T0 - 10 * DAY)  # older: expires first
    fresh, fresh_keys = _session_with_gaps(3, T0 + 20 * DAY)  # another device, still young
    a, b = sess.Address("aa" * 16, 1), sess.Address("aa" * 16, 2)
    with store.transaction():
        store.save_session(a, sess.SessionRecord(current, [previous]).encode())
        store.save_session(b, sess.SessionRecord(fresh).encode())
    store.close()
    raw = b"".join(_raw_records(path))
    assert all(k in raw for k in current_keys + previous_keys + fresh_keys)

    # 25 days after T0: only the previous state's keys (35 days old) are past 30 days.
    Client(SQLiteStore(path), now_ms=lambda: T0 + 25 * DAY).close()
    raw = b"".join(_raw_records(path))
    assert not any(k in raw for k in previous_keys)
    assert all(k in raw for k in current_keys + fresh_keys)

    # 31 days after T0: the current state's go too; the young session keeps its own.
    Client(SQLiteStore(path), now_ms=lambda: T0 + 31 * DAY).close()
    raw = b"".join(_raw_records(path))
    assert not any(k in raw for k in current_keys + previous_keys)
    assert all(k in raw for k in fresh_keys)
    record = sess.SessionRecord.decode(SQLiteStore(path).load_session(a))
    assert record.current.ratchet.skipped == {} and record.previous[0].ratchet.skipped == {}


def test_nothing_written_when_nothing_expired():
    store = MemoryStore()
    session, _ = _session_with_gaps(1, T0)
    address = sess.Address("bb" * 16, 1)
    raw = sess.SessionRecord(session).encode()
    store.save_session(address, raw)
    assert sess.purge_expired_skipped_keys(store, T0 + MAX_SKIPPED_KEY_AGE_MS) == 0
    assert store.load_session(address) == raw
    assert sess.purge_expired_skipped_keys(store, T0 + MAX_SKIPPED_KEY_AGE_MS + 1) == 1
    store.save_session(sess.Address("cc" * 16, 1), b"not a record")  # left for the receive path
    assert sess.purge_expired_skipped_keys(store, T0 + 2 * MAX_SKIPPED_KEY_AGE_MS) == 0
