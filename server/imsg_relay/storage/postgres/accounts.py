"""Accounts, devices and prekeys; per-account sealed-sender access and profiles: the SQL,
each operation one transaction. One-time prekeys are taken with `FOR UPDATE SKIP LOCKED`,
so concurrent fetches never get the same key.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from imsg_relay.auth import same_digest
from imsg_relay.storage.base import (
    Account,
    AccountNotFound,
    Bundle,
    DeviceRef,
    HandleRow,
    KeyCounts,
    OneTimeKey,
    SignedKey,
    StorageConflict,
)
from imsg_relay.storage.postgres import handles
from imsg_relay.storage.postgres.database import Database, one_row


async def create_account(
    db: Database,
    account_id: str,
    account_key: bytes,
    handle: HandleRow | None,
    device_list: bytes,
    device_id: int,
    token_hash: bytes,
    now_ms: int,
) -> None:
    try:
        async with db.tx() as conn:
            await conn.execute(
                "INSERT INTO accounts (account_id, account_key, device_list, created_at) VALUES (%s, %s, %s, %s)",
                (account_id, account_key, device_list, now_ms),
            )
            if handle is not None:
                await handles.insert_handle(conn, handle, None)
            await conn.execute(
                "INSERT INTO devices VALUES (%s, %s, %s, %s)", (account_id, device_id, token_hash, now_ms)
            )
    except pg_errors.UniqueViolation as exc:
        constraint = exc.diag.constraint_name or ""
        if "handle" in constraint:
            raise StorageConflict("handle_taken") from None
        if "token" in constraint:
            raise StorageConflict("token_taken") from None
        raise StorageConflict("account_exists") from None


async def add_device(
    db: Database,
    account_id: str,
    device_id: int,
    token_hash: bytes,
    device_list: bytes,
    now_ms: int,
    max_devices: int | None = None,
) -> None:
    try:
        async with db.tx() as conn:
            # The UPDATE locks the account row, so concurrent adds to one account take
            # turns and the count below cannot go stale before the insert.
            cur = await conn.execute(
                "UPDATE accounts SET device_list = %s WHERE account_id = %s", (device_list, account_id)
            )
            if cur.rowcount == 0:
                raise AccountNotFound(account_id)
            if max_devices is not None:
                cur = await conn.execute(
                    "SELECT count(*), count(*) FILTER (WHERE device_id = %s) FROM devices WHERE account_id = %s",
                    (device_id, account_id),
                )
                total, same = await one_row(cur)
                if same:
                    raise StorageConflict("device_exists")
                if total >= max_devices:
                    raise StorageConflict("too_many_devices")
            await conn.execute(
                "INSERT INTO devices VALUES (%s, %s, %s, %s)", (account_id, device_id, token_hash, now_ms)
            )
    except pg_errors.UniqueViolation as exc:
        if "token" in (exc.diag.constraint_name or ""):
            raise StorageConflict("token_taken") from None
        raise StorageConflict("device_exists") from None


async def remove_device(db: Database, account_id: str, device_id: int, device_list: bytes | None) -> None:
    async with db.tx() as conn:
        cur = await conn.execute(
            "DELETE FROM devices WHERE account_id = %s AND device_id = %s", (account_id, device_id)
        )
        if cur.rowcount == 0:
            raise AccountNotFound(account_id)
        for table in ("signed_prekeys", "one_time_prekeys", "envelopes"):
            await conn.execute(
                sql.SQL("DELETE FROM {} WHERE account_id = %s AND device_id = %s").format(sql.Identifier(table)),
                (account_id, device_id),
            )
        if device_list is not None:
            await conn.execute("UPDATE accounts SET device_list = %s WHERE account_id = %s", (device_list, account_id))


async def authenticate(db: Database, token_hash: bytes) -> DeviceRef | None:
    row = await db.one("SELECT account_id, device_id, token_hash FROM devices WHERE token_hash = %s", (token_hash,))
    if row is None or not same_digest(bytes(row[2]), token_hash):
        return None
    return DeviceRef(row[0], row[1])


async def get_account(db: Database, account_id: str) -> Account | None:
    async with db.tx() as conn:
        cur = await conn.execute("SELECT account_key, device_list FROM accounts WHERE account_id = %s", (account_id,))
        row = await cur.fetchone()
        if row is None:
            return None
        cur = await conn.execute(
            "SELECT device_id FROM devices WHERE account_id = %s ORDER BY device_id", (account_id,)
        )
        devices = tuple(r[0] for r in await cur.fetchall())
    return Account(account_id, bytes(row[0]), bytes(row[1]), devices)


async def put_keys(
    db: Database,
    device: DeviceRef,
    signed_prekey: SignedKey | None,
    kem_last_resort: SignedKey | None,
    one_time: Sequence[OneTimeKey],
    kem_one_time: Sequence[OneTimeKey],
) -> KeyCounts:
    a, d = device.account_id, device.device_id
    async with db.tx() as conn:
        for kind, key in (("x25519", signed_prekey), ("kem", kem_last_resort)):
            if key is not None:
                await conn.execute(
                    "INSERT INTO signed_prekeys VALUES (%s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (account_id, device_id, kind) DO UPDATE SET"
                    " key_id = EXCLUDED.key_id, public_key = EXCLUDED.public_key,"
                    " signature = EXCLUDED.signature",
                    (a, d, kind, key.key_id, key.public_key, key.signature),
                )
        async with conn.cursor() as cur:
            for kind, keys in (("x25519", one_time), ("kem", kem_one_time)):
                if keys:
                    await cur.executemany(
                        "INSERT INTO one_time_prekeys VALUES (%s, %s, %s, %s, %s, %s)"
                        " ON CONFLICT (account_id, device_id, kind, key_id) DO UPDATE SET"
                        " public_key = EXCLUDED.public_key, signature = EXCLUDED.signature",
                        [(a, d, kind, k.key_id, k.public_key, k.signature) for k in keys],
                    )
        return await _counts(conn, a, d)


async def key_counts(db: Database, device: DeviceRef) -> KeyCounts:
    async with db.tx() as conn:
        return await _counts(conn, device.account_id, device.device_id)


async def take_bundles(db: Database, account_id: str, device_id: int | None) -> list[Bundle]:
    async with db.tx() as conn:
        if device_id is None:
            cur = await conn.execute(
                "SELECT device_id FROM devices WHERE account_id = %s ORDER BY device_id", (account_id,)
            )
            ids = [r[0] for r in await cur.fetchall()]
            if not ids:
                raise AccountNotFound(account_id)
        else:
            cur = await conn.execute(
                "SELECT 1 FROM devices WHERE account_id = %s AND device_id = %s", (account_id, device_id)
            )
            if await cur.fetchone() is None:
                raise AccountNotFound(account_id)
            ids = [device_id]
        bundles = []
        for dev in ids:
            bundle = await _take_bundle(conn, account_id, dev)
            if bundle is not None:
                bundles.append(bundle)
        return bundles


async def put_profile(db: Database, account_id: str, key_id: bytes, revision: int, body: bytes, now_ms: int) -> bool:
    async with db.tx() as conn:
        cur = await conn.execute(
            "INSERT INTO profiles VALUES (%s, %s, %s, %s, %s) ON CONFLICT (account_id) DO UPDATE"
            " SET key_id = excluded.key_id, revision = excluded.revision, body = excluded.body,"
            " updated_at = excluded.updated_at WHERE profiles.revision <= excluded.revision",
            (account_id, key_id, revision, body, now_ms),
        )
        return cur.rowcount == 1


async def get_profile(db: Database, account_id: str) -> tuple[bytes, bytes] | None:
    row = await db.one("SELECT key_id, body FROM profiles WHERE account_id = %s", (account_id,))
    return (bytes(row[0]), bytes(row[1])) if row else None


async def get_sealed_access(db: Database, account_id: str) -> tuple[bytes | None, bool]:
    row = await db.one("SELECT access_verifier, allow_anyone FROM sealed_access WHERE account_id = %s", (account_id,))
    if row is None:
        return None, False
    return (bytes(row[0]) if row[0] is not None else None), bool(row[1])


async def set_sealed_access(db: Database, account_id: str, verifier: bytes | None, allow_anyone: bool) -> None:
    async with db.tx() as conn:
        await conn.execute(
            "INSERT INTO sealed_access (account_id, access_verifier, allow_anyone)"
            " VALUES (%s, %s, %s) ON CONFLICT (account_id) DO UPDATE SET"
            " access_verifier = COALESCE(EXCLUDED.access_verifier,"
            " sealed_access.access_verifier), allow_anyone = EXCLUDED.allow_anyone",
            (account_id, verifier, allow_anyone),
        )


async def _counts(conn: psycopg.AsyncConnection, account_id: str, device_id: int) -> KeyCounts:
    cur = await conn.execute(
        "SELECT kind, count(*) FROM one_time_prekeys WHERE account_id = %s AND device_id = %s GROUP BY kind",
        (account_id, device_id),
    )
    counts: dict[str, int] = dict(await cur.fetchall())
    return KeyCounts(counts.get("x25519", 0), counts.get("kem", 0))


async def _take_bundle(conn: psycopg.AsyncConnection, account_id: str, device_id: int) -> Bundle | None:
    cur = await conn.execute(
        "SELECT kind, key_id, public_key, signature FROM signed_prekeys WHERE account_id = %s AND device_id = %s",
        (account_id, device_id),
    )
    signed = {kind: SignedKey(key_id, bytes(pk), bytes(sig)) for kind, key_id, pk, sig in await cur.fetchall()}
    if "x25519" not in signed:
        return None
    taken: dict[str, OneTimeKey] = {}
    for kind in ("x25519", "kem"):
        cur = await conn.execute(
            "DELETE FROM one_time_prekeys WHERE (account_id, device_id, kind, key_id) = ("
            " SELECT account_id, device_id, kind, key_id FROM one_time_prekeys"
            " WHERE account_id = %s AND device_id = %s AND kind = %s"
            " ORDER BY key_id LIMIT 1 FOR UPDATE SKIP LOCKED)"
            " RETURNING key_id, public_key, signature",
            (account_id, device_id, kind),
        )
        row = await cur.fetchone()
        if row is not None:
            taken[kind] = OneTimeKey(row[0], bytes(row[1]), bytes(row[2]) if row[2] is not None else None)
    kem_one_time = taken.get("kem")
    kem: SignedKey | None
    if kem_one_time is not None and kem_one_time.signature is not None:
        kem = SignedKey(kem_one_time.key_id, kem_one_time.public_key, kem_one_time.signature)
        last_resort = False
    else:
        kem = signed.get("kem")
        last_resort = kem is not None
    return Bundle(device_id, signed["x25519"], taken.get("x25519"), kem, last_resort)
