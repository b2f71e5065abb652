"""Mailboxes (envelopes) and provisioning channels: the SQL, each operation one
transaction. Caps (queued messages, open channels) hold under concurrency through row or
advisory locks taken in the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg import errors as pg_errors

from imsg_relay.storage.base import (
    AccountNotFound,
    ChannelNotFound,
    DeviceMismatch,
    DeviceRef,
    Envelope,
    StorageConflict,
)
from imsg_relay.storage.postgres.database import Database, one_row

# One statement, so one round trip in autocommit (it was BEGIN, SELECT, INSERT, COMMIT):
# the account's devices are read FOR SHARE (a device removed concurrently waits for this
# send, or this send sees it gone; never an envelope stored for a removed device), and the
# envelopes are inserted only when the bodies name exactly those devices. The devices are
# returned either way, so a mismatch is reported as before and nothing was stored.
_STORE = """
WITH current AS (
    SELECT device_id FROM devices WHERE account_id = %(account)s FOR SHARE
), matches AS (
    SELECT (SELECT coalesce(array_agg(device_id ORDER BY device_id), '{}')
            FROM current WHERE device_id IS DISTINCT FROM %(exclude)s) = %(given)s::int[] AS ok
), stored AS (
    INSERT INTO envelopes (account_id, device_id, message_id, body, received_at)
    SELECT %(account)s, b.device_id, %(message)s, b.body, %(now)s
    FROM unnest(%(given)s::int[], %(bodies)s::bytea[]) AS b(device_id, body)
    WHERE (SELECT ok FROM matches)
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT coalesce(array_agg(device_id), '{}') FROM current
"""


async def store_envelopes(
    db: Database, account_id: str, message_id: str, bodies: dict[int, bytes], exclude_device: int | None, now_ms: int
) -> int:
    given = sorted(bodies)
    row = await db.one(
        _STORE,
        {
            "account": account_id,
            "exclude": exclude_device,
            "given": given,
            "bodies": [bodies[d] for d in given],
            "message": message_id,
            "now": now_ms,
        },
    )
    current = set(row[0]) if row else set()
    if not current:
        raise AccountNotFound(account_id)
    current.discard(exclude_device)
    if set(given) != current:
        raise DeviceMismatch(current - set(given), set(given) - current)
    return len(bodies)


async def fetch(
    db: Database, device: DeviceRef, limit: int, not_before_ms: int, max_bytes: int
) -> tuple[list[Envelope], bool]:
    async with db.tx() as conn:
        cur = await conn.execute(
            "SELECT message_id, body, received_at FROM envelopes"
            " WHERE account_id = %s AND device_id = %s AND received_at >= %s"
            " ORDER BY seq LIMIT %s",
            (device.account_id, device.device_id, not_before_ms, limit + 1),
        )
        rows = await cur.fetchall()
    out: list[Envelope] = []
    size = 0
    more = False
    for message_id, body, received_at in rows:
        if len(out) == limit or (out and size + len(body) > max_bytes):
            more = True
            break
        out.append(Envelope(message_id, bytes(body), received_at))
        size += len(body)
    return out, more


async def ack(db: Database, device: DeviceRef, message_ids: Sequence[str]) -> int:
    async with db.tx() as conn:
        cur = await conn.execute(
            "DELETE FROM envelopes WHERE account_id = %s AND device_id = %s AND message_id = ANY(%s)",
            (device.account_id, device.device_id, list(dict.fromkeys(message_ids))),
        )
        return cur.rowcount


async def delete_expired(db: Database, cutoff_ms: int, limit: int) -> int:
    async with db.tx() as conn:
        cur = await conn.execute(
            "DELETE FROM envelopes WHERE seq IN (SELECT seq FROM envelopes"
            " WHERE received_at < %s ORDER BY received_at LIMIT %s)",
            (cutoff_ms, limit),
        )
        return cur.rowcount


async def create_channel(
    db: Database, channel: str, account_id: str, now_ms: int, expires_at: int, max_open: int
) -> None:
    try:
        async with db.tx() as conn:
            # Serialise channel creation per account, so the cap holds under concurrency.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("provisioning:" + account_id,))
            cur = await conn.execute(
                "SELECT count(*) FROM provisioning_channels WHERE account_id = %s AND expires_at > %s",
                (account_id, now_ms),
            )
            if (await one_row(cur))[0] >= max_open:
                raise StorageConflict("too_many_channels")
            await conn.execute(
                "INSERT INTO provisioning_channels VALUES (%s, %s, %s, %s)",
                (channel, account_id, now_ms, expires_at),
            )
    except pg_errors.UniqueViolation:
        raise StorageConflict("channel_exists") from None


async def put_provisioning(db: Database, channel: str, box: str, body: bytes, now_ms: int, max_queued: int) -> int:
    async with db.tx() as conn:
        # FOR UPDATE on the channel row: concurrent puts take turns, so the cap holds.
        await _live_channel(conn, channel, now_ms, lock=True)
        cur = await conn.execute(
            "SELECT count(*) FROM provisioning_messages WHERE channel = %s AND box = %s", (channel, box)
        )
        queued: int = (await one_row(cur))[0]
        if queued >= max_queued:
            raise StorageConflict("box_full")
        await conn.execute(
            "INSERT INTO provisioning_messages (channel, box, body) VALUES (%s, %s, %s)", (channel, box, body)
        )
        return queued + 1


async def take_provisioning(db: Database, channel: str, box: str, now_ms: int) -> bytes | None:
    async with db.tx() as conn:
        await _live_channel(conn, channel, now_ms, lock=False)
        cur = await conn.execute(
            "DELETE FROM provisioning_messages WHERE seq = (SELECT seq FROM"
            " provisioning_messages WHERE channel = %s AND box = %s ORDER BY seq LIMIT 1"
            " FOR UPDATE SKIP LOCKED) RETURNING body",
            (channel, box),
        )
        row = await cur.fetchone()
        return None if row is None else bytes(row[0])


async def close_channel(db: Database, channel: str, account_id: str, now_ms: int) -> None:
    async with db.tx() as conn:
        cur = await conn.execute(
            "DELETE FROM provisioning_channels WHERE channel = %s AND account_id = %s RETURNING expires_at",
            (channel, account_id),
        )
        row = await cur.fetchone()
        if row is None:
            raise ChannelNotFound(channel)
        await conn.execute("DELETE FROM provisioning_messages WHERE channel = %s", (channel,))
    if row[0] <= now_ms:  # deleted all the same, but it was no longer open
        raise ChannelNotFound(channel)


async def delete_expired_channels(db: Database, now_ms: int, limit: int) -> int:
    async with db.tx() as conn:
        cur = await conn.execute(
            "DELETE FROM provisioning_channels WHERE channel IN (SELECT channel FROM"
            " provisioning_channels WHERE expires_at <= %s ORDER BY expires_at LIMIT %s"
            " FOR UPDATE SKIP LOCKED) RETURNING channel",
            (now_ms, limit),
        )
        ids = [r[0] for r in await cur.fetchall()]
        if ids:
            await conn.execute("DELETE FROM provisioning_messages WHERE channel = ANY(%s)", (ids,))
        return len(ids)


async def _live_channel(conn: psycopg.AsyncConnection, channel: str, now_ms: int, lock: bool) -> None:
    cur = await conn.execute(
        "SELECT expires_at FROM provisioning_channels WHERE channel = %s" + (" FOR UPDATE" if lock else ""), (channel,)
    )
    row = await cur.fetchone()
    if row is None or row[0] <= now_ms:
        raise ChannelNotFound(channel)
