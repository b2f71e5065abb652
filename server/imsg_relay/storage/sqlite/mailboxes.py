"""Mailboxes (envelopes) and provisioning channels: the SQL, as functions over a
connection. Writes run in the group-commit writer's transaction and raise their refusals
before they write anything.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from imsg_relay.storage.base import (
    AccountNotFound,
    ChannelNotFound,
    DeviceMismatch,
    DeviceRef,
    Envelope,
    StorageConflict,
)


def store_envelopes(
    conn: sqlite3.Connection,
    account_id: str,
    message_id: str,
    bodies: dict[int, bytes],
    exclude_device: int | None,
    now_ms: int,
) -> int:
    rows = [(account_id, dev, message_id, body, now_ms) for dev, body in bodies.items()]

    current = {r[0] for r in conn.execute("SELECT device_id FROM devices WHERE account_id = ?", (account_id,))}
    if not current:
        raise AccountNotFound(account_id)
    current.discard(exclude_device)
    given = set(bodies)
    if given != current:
        raise DeviceMismatch(current - given, given - current)
    conn.executemany(
        "INSERT OR IGNORE INTO envelopes (account_id, device_id, message_id, body, received_at) VALUES (?, ?, ?, ?, ?)",
        rows,
    )
    return len(rows)


def fetch(
    conn: sqlite3.Connection, device: DeviceRef, limit: int, not_before_ms: int, max_bytes: int
) -> tuple[list[Envelope], bool]:
    cursor = conn.execute(
        "SELECT message_id, body, received_at FROM envelopes"
        " WHERE account_id = ? AND device_id = ? AND received_at >= ?"
        " ORDER BY seq LIMIT ?",
        (device.account_id, device.device_id, not_before_ms, limit + 1),
    )
    out: list[Envelope] = []
    size = 0
    more = False
    for message_id, body, received_at in cursor:
        if len(out) == limit or (out and size + len(body) > max_bytes):
            more = True
            break
        out.append(Envelope(message_id, body, received_at))
        size += len(body)
    cursor.close()
    return out, more


def ack(conn: sqlite3.Connection, device: DeviceRef, message_ids: Sequence[str]) -> int:
    rows = [(device.account_id, device.device_id, m) for m in dict.fromkeys(message_ids)]

    before = conn.total_changes
    conn.executemany("DELETE FROM envelopes WHERE account_id = ? AND device_id = ? AND message_id = ?", rows)
    return conn.total_changes - before


def delete_expired(conn: sqlite3.Connection, cutoff_ms: int, limit: int) -> int:
    return conn.execute(
        "DELETE FROM envelopes WHERE seq IN (SELECT seq FROM envelopes"
        " WHERE received_at < ? ORDER BY received_at LIMIT ?)",
        (cutoff_ms, limit),
    ).rowcount


def create_channel(
    conn: sqlite3.Connection, channel: str, account_id: str, now_ms: int, expires_at: int, max_open: int
) -> None:
    open_now = conn.execute(
        "SELECT count(*) FROM provisioning_channels WHERE account_id = ? AND expires_at > ?",
        (account_id, now_ms),
    ).fetchone()[0]
    if open_now >= max_open:
        raise StorageConflict("too_many_channels")
    if conn.execute("SELECT 1 FROM provisioning_channels WHERE channel = ?", (channel,)).fetchone():
        raise StorageConflict("channel_exists")
    conn.execute("INSERT INTO provisioning_channels VALUES (?, ?, ?, ?)", (channel, account_id, now_ms, expires_at))


def put_provisioning(
    conn: sqlite3.Connection, channel: str, box: str, body: bytes, now_ms: int, max_queued: int
) -> int:
    _live_channel(conn, channel, now_ms)
    queued: int = conn.execute(
        "SELECT count(*) FROM provisioning_messages WHERE channel = ? AND box = ?", (channel, box)
    ).fetchone()[0]
    if queued >= max_queued:
        raise StorageConflict("box_full")
    conn.execute("INSERT INTO provisioning_messages (channel, box, body) VALUES (?, ?, ?)", (channel, box, body))
    return queued + 1


def has_provisioning(conn: sqlite3.Connection, channel: str, box: str, now_ms: int) -> bool:
    """Whether the box holds a message (a read: polling an empty box writes nothing)."""
    _live_channel(conn, channel, now_ms)
    row = conn.execute("SELECT 1 FROM provisioning_messages WHERE channel = ? AND box = ? LIMIT 1", (channel, box))
    return row.fetchone() is not None


def take_provisioning(conn: sqlite3.Connection, channel: str, box: str, now_ms: int) -> bytes | None:
    _live_channel(conn, channel, now_ms)
    row = conn.execute(
        "DELETE FROM provisioning_messages WHERE seq = (SELECT seq FROM"
        " provisioning_messages WHERE channel = ? AND box = ? ORDER BY seq LIMIT 1)"
        " RETURNING body",
        (channel, box),
    ).fetchone()
    return None if row is None else row[0]


def delete_expired_channels(conn: sqlite3.Connection, now_ms: int, limit: int) -> int:
    ids = [
        (r[0],)
        for r in conn.execute(
            "SELECT channel FROM provisioning_channels WHERE expires_at <= ? ORDER BY expires_at LIMIT ?",
            (now_ms, limit),
        )
    ]
    conn.executemany("DELETE FROM provisioning_messages WHERE channel = ?", ids)
    conn.executemany("DELETE FROM provisioning_channels WHERE channel = ?", ids)
    return len(ids)


def close_channel(conn: sqlite3.Connection, channel: str, account_id: str, now_ms: int) -> bool:
    """Deletes the channel (live or expired) and its messages; True when it was live.
    Raises ChannelNotFound when the account holds no channel of that id."""
    row = conn.execute(
        "SELECT expires_at FROM provisioning_channels WHERE channel = ? AND account_id = ?",
        (channel, account_id),
    ).fetchone()
    if row is None:
        raise ChannelNotFound(channel)
    conn.execute("DELETE FROM provisioning_messages WHERE channel = ?", (channel,))
    conn.execute("DELETE FROM provisioning_channels WHERE channel = ?", (channel,))
    return bool(row[0] > now_ms)


def _live_channel(conn: sqlite3.Connection, channel: str, now_ms: int) -> None:
    row = conn.execute("SELECT expires_at FROM provisioning_channels WHERE channel = ?", (channel,)).fetchone()
    if row is None or row[0] <= now_ms:
        raise ChannelNotFound(channel)
