"""Accounts, devices and prekeys; per-account sealed-sender access and profiles: the SQL,
as functions over a connection. Writes run in the group-commit writer's transaction
(storage/sqlite/writer.py) and raise their refusals before they write anything.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

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
from imsg_relay.storage.sqlite import handles


def create_account(
    conn: sqlite3.Connection,
    account_id: str,
    account_key: bytes,
    handle: HandleRow | None,
    device_list: bytes,
    device_id: int,
    token_hash: bytes,
    now_ms: int,
) -> None:
    if conn.execute("SELECT 1 FROM accounts WHERE account_id = ?", (account_id,)).fetchone():
        raise StorageConflict("account_exists")
    if conn.execute("SELECT 1 FROM devices WHERE token_hash = ?", (token_hash,)).fetchone():
        raise StorageConflict("token_taken")
    if handle is not None:  # raises handle_taken before anything is written
        handles.insert_handle(conn, handle, None)
    conn.execute("INSERT INTO accounts VALUES (?, ?, ?, ?)", (account_id, account_key, device_list, now_ms))
    conn.execute("INSERT INTO devices VALUES (?, ?, ?, ?)", (account_id, device_id, token_hash, now_ms))


def add_device(
    conn: sqlite3.Connection,
    account_id: str,
    device_id: int,
    token_hash: bytes,
    device_list: bytes,
    now_ms: int,
    max_devices: int | None = None,
) -> None:
    if not conn.execute("SELECT 1 FROM accounts WHERE account_id = ?", (account_id,)).fetchone():
        raise AccountNotFound(account_id)
    if conn.execute("SELECT 1 FROM devices WHERE account_id = ? AND device_id = ?", (account_id, device_id)).fetchone():
        raise StorageConflict("device_exists")
    if (
        max_devices is not None
        and conn.execute("SELECT count(*) FROM devices WHERE account_id = ?", (account_id,)).fetchone()[0]
        >= max_devices
    ):
        raise StorageConflict("too_many_devices")
    if conn.execute("SELECT 1 FROM devices WHERE token_hash = ?", (token_hash,)).fetchone():
        raise StorageConflict("token_taken")
    conn.execute("INSERT INTO devices VALUES (?, ?, ?, ?)", (account_id, device_id, token_hash, now_ms))
    conn.execute("UPDATE accounts SET device_list = ? WHERE account_id = ?", (device_list, account_id))


def remove_device(conn: sqlite3.Connection, account_id: str, device_id: int, device_list: bytes | None) -> None:
    gone = conn.execute("DELETE FROM devices WHERE account_id = ? AND device_id = ?", (account_id, device_id)).rowcount
    if not gone:
        raise AccountNotFound(account_id)
    for table in ("signed_prekeys", "one_time_prekeys", "envelopes"):
        conn.execute(f"DELETE FROM {table} WHERE account_id = ? AND device_id = ?", (account_id, device_id))
    if device_list is not None:
        conn.execute("UPDATE accounts SET device_list = ? WHERE account_id = ?", (device_list, account_id))


def authenticate(conn: sqlite3.Connection, token_hash: bytes) -> DeviceRef | None:
    row = conn.execute(
        "SELECT account_id, device_id, token_hash FROM devices WHERE token_hash = ?", (token_hash,)
    ).fetchone()
    if row is None:
        return None
    if not same_digest(row[2], token_hash):
        return None
    return DeviceRef(row[0], row[1])


def get_account(conn: sqlite3.Connection, account_id: str) -> Account | None:
    conn = conn
    row = conn.execute("SELECT account_key, device_list FROM accounts WHERE account_id = ?", (account_id,)).fetchone()
    if row is None:
        return None
    devices = tuple(
        r[0]
        for r in conn.execute("SELECT device_id FROM devices WHERE account_id = ? ORDER BY device_id", (account_id,))
    )
    return Account(account_id, row[0], row[1], devices)


def put_keys(
    conn: sqlite3.Connection,
    device: DeviceRef,
    signed_prekey: SignedKey | None,
    kem_last_resort: SignedKey | None,
    one_time: Sequence[OneTimeKey],
    kem_one_time: Sequence[OneTimeKey],
) -> KeyCounts:
    a, d = device.account_id, device.device_id

    for kind, key in (("x25519", signed_prekey), ("kem", kem_last_resort)):
        if key is not None:
            conn.execute(
                "INSERT OR REPLACE INTO signed_prekeys VALUES (?, ?, ?, ?, ?, ?)",
                (a, d, kind, key.key_id, key.public_key, key.signature),
            )
    for kind, keys in (("x25519", one_time), ("kem", kem_one_time)):
        conn.executemany(
            "INSERT OR REPLACE INTO one_time_prekeys VALUES (?, ?, ?, ?, ?, ?)",
            [(a, d, kind, k.key_id, k.public_key, k.signature) for k in keys],
        )
    return _counts(conn, a, d)


def key_counts(conn: sqlite3.Connection, device: DeviceRef) -> KeyCounts:
    return _counts(conn, device.account_id, device.device_id)


def take_bundles(conn: sqlite3.Connection, account_id: str, device_id: int | None) -> list[Bundle]:
    if device_id is None:
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT device_id FROM devices WHERE account_id = ? ORDER BY device_id", (account_id,)
            )
        ]
        if not ids and not conn.execute("SELECT 1 FROM accounts WHERE account_id = ?", (account_id,)).fetchone():
            raise AccountNotFound(account_id)
    else:
        if not conn.execute(
            "SELECT 1 FROM devices WHERE account_id = ? AND device_id = ?", (account_id, device_id)
        ).fetchone():
            raise AccountNotFound(account_id)
        ids = [device_id]
    bundles = []
    for dev in ids:
        bundle = _take_bundle(conn, account_id, dev)
        if bundle is not None:
            bundles.append(bundle)
    return bundles


def put_profile(
    conn: sqlite3.Connection, account_id: str, key_id: bytes, revision: int, body: bytes, now_ms: int
) -> bool:
    cur = conn.execute(
        "INSERT INTO profiles VALUES (?, ?, ?, ?, ?) ON CONFLICT (account_id) DO UPDATE"
        " SET key_id = excluded.key_id, revision = excluded.revision, body = excluded.body,"
        " updated_at = excluded.updated_at WHERE profiles.revision <= excluded.revision",
        (account_id, key_id, revision, body, now_ms),
    )
    return cur.rowcount == 1


def get_profile(conn: sqlite3.Connection, account_id: str) -> tuple[bytes, bytes] | None:
    row = conn.execute("SELECT key_id, body FROM profiles WHERE account_id = ?", (account_id,)).fetchone()
    return (row[0], row[1]) if row else None


def get_sealed_access(conn: sqlite3.Connection, account_id: str) -> tuple[bytes | None, bool]:
    row = conn.execute(
        "SELECT access_verifier, allow_anyone FROM sealed_access WHERE account_id = ?", (account_id,)
    ).fetchone()
    return (row[0], bool(row[1])) if row else (None, False)


def set_sealed_access(conn: sqlite3.Connection, account_id: str, verifier: bytes | None, allow_anyone: bool) -> None:
    conn.execute(
        "INSERT INTO sealed_access (account_id, access_verifier, allow_anyone)"
        " VALUES (?, ?, ?) ON CONFLICT (account_id) DO UPDATE SET"
        " access_verifier = COALESCE(excluded.access_verifier, access_verifier),"
        " allow_anyone = excluded.allow_anyone",
        (account_id, verifier, int(allow_anyone)),
    )


def _counts(conn: sqlite3.Connection, account_id: str, device_id: int) -> KeyCounts:
    counts = dict(
        conn.execute(
            "SELECT kind, count(*) FROM one_time_prekeys WHERE account_id = ? AND device_id = ? GROUP BY kind",
            (account_id, device_id),
        ).fetchall()
    )
    return KeyCounts(counts.get("x25519", 0), counts.get("kem", 0))


def _take_bundle(conn: sqlite3.Connection, account_id: str, device_id: int) -> Bundle | None:
    signed = {
        kind: SignedKey(key_id, pk, sig)
        for kind, key_id, pk, sig in conn.execute(
            "SELECT kind, key_id, public_key, signature FROM signed_prekeys WHERE account_id = ? AND device_id = ?",
            (account_id, device_id),
        )
    }
    if "x25519" not in signed:
        return None
    taken: dict[str, OneTimeKey] = {}
    for kind in ("x25519", "kem"):
        row = conn.execute(
            "DELETE FROM one_time_prekeys WHERE rowid = (SELECT rowid FROM one_time_prekeys"
            " WHERE account_id = ? AND device_id = ? AND kind = ? ORDER BY key_id LIMIT 1)"
            " RETURNING key_id, public_key, signature",
            (account_id, device_id, kind),
        ).fetchone()
        if row is not None:
            taken[kind] = OneTimeKey(row[0], row[1], row[2])
    kem_one_time = taken.get("kem")
    kem: SignedKey | None
    if kem_one_time is not None and kem_one_time.signature is not None:
        kem = SignedKey(kem_one_time.key_id, kem_one_time.public_key, kem_one_time.signature)
        last_resort = False
    else:
        kem = signed.get("kem")
        last_resort = kem is not None
    return Bundle(device_id, signed["x25519"], taken.get("x25519"), kem, last_resort)
