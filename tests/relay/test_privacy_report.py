"""`GET /v1/privacy/report` held against the relay's own tables, on SQLite and PostgreSQL,
and the rule that keeps it complete: every table of a live database is read by a report
section or declared to hold nothing about an account (a table added later fails here until
the report covers it)."""

from __future__ import annotations

import json
import os
import secrets
import sqlite3

import httpx
import pytest

from imsg_relay import privacy

from .helpers import b64, new_message_id, open_channel, register, send
from .test_postgres import PG, pg_reason
from support.relays import ThreadRelay, relay_settings

DAY_MS = 86_400_000


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


def _postgres(schema: str):
    import psycopg

    conn = psycopg.connect(PG, autocommit=True)
    conn.execute(f'SET search_path TO "{schema}"')
    return conn


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path):
    """(ThreadRelay, run(sql, *params) -> rows, list of table names)."""
    clock = Clock()
    if request.param == "sqlite":
        with ThreadRelay(relay_settings(tmp_path), clock=clock) as relay:
            conn = sqlite3.connect(tmp_path / "relay.db")

            def run(sql, *params):
                return conn.execute(sql, params).fetchall()

            tables = [r[0] for r in run("SELECT name FROM sqlite_master WHERE type = 'table'")]
            yield relay, clock, run, tables
            conn.close()
        return
    if pg_reason is not None:
        pytest.skip(pg_reason)
    from imsg_relay.storage.postgres import PostgresStorage

    schema = f"imsg_test_{secrets.token_hex(6)}"
    storage = PostgresStorage(PG, schema=schema, pool_size=2)
    try:
        with ThreadRelay(relay_settings(tmp_path), storage=storage, clock=clock) as relay:
            conn = _postgres(schema)

            def run(sql, *params):
                return [
                    tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                    for row in conn.execute(sql.replace("?", "%s"), params).fetchall()
                ]

            tables = [
                r[0] for r in run("SELECT table_name FROM information_schema.tables WHERE table_schema = ?", schema)
            ]
            yield relay, clock, run, tables
            conn.close()
    finally:
        with _postgres("public") as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _keys(n: int, start: int) -> list[dict]:
    return [{"key_id": start + i, "public_key": b64(os.urandom(33))} for i in range(n)]


def test_every_table_is_in_the_report_or_declared_not_about_an_account(backend):
    _, _, _, tables = backend
    assert tables, "no tables found"
    missing = sorted(set(tables) - privacy.COVERED_TABLES - set(privacy.NOT_ACCOUNT_DATA))
    assert missing == [], (
        f"relay tables {missing} are neither read by imsg_relay/privacy.py SECTIONS "
        "nor listed in NOT_ACCOUNT_DATA with a reason: add them to the privacy report"
    )
    assert privacy.COVERED_TABLES <= set(tables)  # no section reads a table that is not there


def test_report_matches_the_tables(backend):
    relay, clock, run, _ = backend
    with httpx.Client(base_url=relay.url, timeout=10) as c:
        me, other = register(c, devices=2), register(c)
        h = me.headers()
        sig = b64(os.urandom(64))
        assert (
            c.put(
                "/v1/keys",
                headers=h,
                json={
                    "signed_prekey": {"key_id": 1, "public_key": b64(os.urandom(33)), "signature": sig},
                    "one_time": _keys(7, 10),
                },
            ).status_code
            == 200
        )
        assert c.put("/v1/keys", headers=me.headers(2), json={"one_time": _keys(3, 50)}).status_code == 200
        assert c.put("/v1/keys", headers=other.headers(), json={"one_time": _keys(5, 1)}).status_code == 200
        old = new_message_id()
        assert send(c, other, me, b"a" * 300, old).status_code == 200
        clock.t += 31 * 86400  # the first envelope is past retention now (not swept yet)
        for size in (100, 2000):
            assert send(c, other, me, b"b" * size).status_code == 200
        assert send(c, me, other, b"not mine to see").status_code == 200
        channel = open_channel(c, me)
        assert c.put(f"/v1/provisioning/{channel}/new", json={"body": b64(b"p" * 40)}).status_code == 200
        blob = c.post("/v1/blobs", headers=h, json={"size": 5000}).json()["blob_id"]
        assert (
            c.put(
                f"/v1/blobs/{blob}/parts/0",
                headers={**h, "Content-Type": "application/octet-stream"},
                content=os.urandom(5000),
            ).status_code
            == 200
        )
        assert c.post("/v1/blobs", headers=other.headers(), json={"size": 10}).status_code == 201
        r = c.put(
            "/v1/backup",
            headers={**h, "Content-Type": "application/octet-stream"},
            params={"access_hash": os.urandom(32).hex()},
            content=os.urandom(70_000),
        )
        assert r.status_code == 200, r.text

        key_id = os.urandom(32)
        profile = b"\x01" + key_id + (7).to_bytes(8, "big") + os.urandom(400)
        r = c.put(
            f"/v1/profile/{key_id.hex()}", headers={**h, "Content-Type": "application/octet-stream"}, content=profile
        )
        assert r.status_code == 200, r.text
        r = c.get("/v1/privacy/report", headers=me.headers(2))
        assert r.status_code == 200, r.text
        doc = r.json()
        assert c.get("/v1/privacy/report").status_code == 401

    a = me.account_id
    now = int(clock.t * 1000)
    assert doc["account_id"] == a and doc["generated_at"] == now
    assert doc["retention"] == {"envelope_days": 30, "blob_days": 30}
    ((key, created),) = run("SELECT account_key, created_at FROM accounts WHERE account_id = ?", a)
    assert [(x["account_key"], x["created_at"]) for x in doc["account"]] == [(b64(key), created)]
    assert [(x["blinded"], x["state"], x["receiving"]) for x in doc["handles"]] == [
        (b64(r[0]), r[1], bool(r[2]))
        for r in run("SELECT tag, state, receiving FROM handles WHERE account_id = ? ORDER BY created_at, tag", a)
    ]
    assert len(doc["handles"]) == 1 and doc["handles"][0]["state"] == "unverified"
    assert [(d["device_id"], d["created_at"]) for d in doc["devices"]] == run(
        "SELECT device_id, created_at FROM devices WHERE account_id = ? ORDER BY device_id", a
    )
    assert "token" not in str(doc["devices"])
    assert (
        [(p["device_id"], p["kind"], p["count"]) for p in doc["one_time_prekeys"]]
        == run(
            "SELECT device_id, kind, count(*) FROM one_time_prekeys WHERE account_id = ?"
            " GROUP BY device_id, kind ORDER BY device_id, kind",
            a,
        )
        == [(1, "x25519", 7), (2, "x25519", 3)]
    )
    assert [(p["device_id"], p["kind"], p["key_id"]) for p in doc["signed_prekeys"]] == [(1, "x25519", 1)]
    # Envelopes: each device's own copy, with sizes and ages; the expired one is still on
    # disk until the sweeper runs, so it is reported, marked expired.
    rows = run(
        "SELECT device_id, message_id, length(body), received_at FROM envelopes WHERE account_id = ? ORDER BY seq", a
    )
    assert [(e["device_id"], e["message_id"], e["size"], e["received_at"]) for e in doc["envelopes"]] == rows
    assert len(rows) == 6 and {e["size"] for e in doc["envelopes"]} == {300, 100, 2000}
    assert [e["expired"] for e in doc["envelopes"] if e["message_id"] == old] == [True, True]
    assert all(e["expires_at"] == e["received_at"] + 30 * DAY_MS for e in doc["envelopes"])
    assert [(m["device_id"], m["count"], m["bytes"]) for m in doc["mailboxes"]] == [(1, 3, 2400), (2, 3, 2400)]
    assert [(x["channel"], x["queued_messages"], x["queued_bytes"]) for x in doc["provisioning_channels"]] == [
        (channel, 1, 40)
    ]
    ((bsize, bcreated),) = run("SELECT size, created_at FROM blobs WHERE account_id = ?", a)
    assert [
        (b["blob_id"], b["size"], b["created_at"], b["complete"], b["parts_received"], b["expires_at"])
        for b in doc["blobs"]
    ] == [(blob, bsize, bcreated, False, 1, bcreated + 30 * DAY_MS)]
    assert (
        [(b["size"], b["updated_at"]) for b in doc["backups"]]
        == run("SELECT size, updated_at FROM backups WHERE account_id = ?", a)
        == [(70_000, now)]
    )
    assert [(p["key_id"], p["revision"], p["size"]) for p in doc["profiles"]] == [(b64(key_id), 7, len(profile))]
    assert [(p["revision"], p["updated_at"]) for p in doc["profiles"]] == run(
        "SELECT revision, updated_at FROM profiles WHERE account_id = ?", a
    )
    # Nothing of the other account leaks into mine.
    assert other.account_id not in json.dumps(doc)
    assert len(doc["blobs"]) == 1
