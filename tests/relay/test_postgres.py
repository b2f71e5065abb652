"""PostgreSQL storage and Redis wake-ups, through the real app on a live server.

What every Storage method does is checked on PostgreSQL and SQLite alike by
test_storage_conformance.py; what is here is what only a live PostgreSQL shows: two
workers on one database woken through Redis, device-cap and provisioning races through
the app, and what the PostgreSQL tables hold (no handle, name or photo in the clear).

Skipped, with the reason, when PostgreSQL (127.0.0.1:5432, database `test`, user `postgres`)
or Redis (127.0.0.1:6379) is not reachable. Each test gets its own PostgreSQL schema.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time

import httpx
import pytest

from .helpers import b64, new_message_id, private_lookup, register
from support.relays import ThreadRelay, relay_settings

PG = os.environ.get("IMSG_TEST_POSTGRES", "host=127.0.0.1 port=5432 dbname=test user=postgres")
REDIS = os.environ.get("IMSG_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _postgres_reason() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return f"postgresql not reachable at {PG!r}: {type(exc).__name__}"
    return None


def _redis_reason() -> str | None:
    try:
        import redis

        redis.Redis.from_url(REDIS, socket_connect_timeout=2).ping()
    except Exception as exc:
        return f"redis not reachable at {REDIS}: {type(exc).__name__}"
    return None


pg_reason = _postgres_reason()
pytestmark = [pytest.mark.postgres, pytest.mark.skipif(pg_reason is not None, reason=pg_reason or "")]


@pytest.fixture
def pg_schema():
    import psycopg

    name = f"imsg_test_{secrets.token_hex(6)}"
    yield name
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def pg_live(tmp_path, pg_schema):
    from imsg_relay.storage.postgres import PostgresStorage

    storage = PostgresStorage(PG, schema=pg_schema, pool_size=4)
    with ThreadRelay(relay_settings(tmp_path), storage=storage) as relay:
        yield relay


@pytest.mark.redis
@pytest.mark.skipif(_redis_reason() is not None, reason=_redis_reason() or "")
def test_long_poll_on_one_worker_wakes_from_a_send_on_another(tmp_path, pg_schema):
    """Two relays sharing one database and Redis: a send to worker B wakes a fetch on A."""
    from imsg_relay.keyset import KeySet
    from imsg_relay.push.redis import RedisPush
    from imsg_relay.storage.postgres import PostgresStorage

    channel = f"imsg-test:{pg_schema}"
    keys = tmp_path / "shared.keys"  # workers of one relay share one key set (issue 16)
    KeySet.generate().write_new(keys)
    relays = [
        ThreadRelay(
            relay_settings(tmp_path / name, keys_file=keys),
            storage=PostgresStorage(PG, schema=pg_schema, pool_size=2),
            push=RedisPush(REDIS, channel=channel),
        )
        for name in ("a", "b")
    ]
    with relays[0] as a, relays[1] as b:
        with httpx.Client(base_url=a.url, timeout=10) as c:
            alice, bob = register(c), register(c)

        async def scenario():
            async with httpx.AsyncClient(timeout=20) as c:
                poll = asyncio.create_task(c.get(a.url + "/v1/messages?wait=10", headers=bob.headers()))
                await asyncio.sleep(0.3)
                start = time.monotonic()
                r = await c.put(
                    b.url + f"/v1/messages/{bob.account_id}",
                    headers=alice.headers(),
                    json={"message_id": new_message_id(), "messages": [{"device_id": 1, "body": b64(b"hi")}]},
                )
                assert r.status_code == 200
                got = await poll
                return time.monotonic() - start, got.json()

        elapsed, got = asyncio.run(scenario())
        assert len(got["messages"]) == 1
        assert elapsed < 2.0  # woken by the push, not the wait running out


def test_provisioning_and_device_cap_on_postgres(tmp_path, pg_schema):
    from imsg_relay.storage.postgres import PostgresStorage

    from .helpers import new_token, open_channel

    now = [1_800_000_000.0]
    storage = PostgresStorage(PG, schema=pg_schema, pool_size=4)
    with (
        ThreadRelay(relay_settings(tmp_path, max_devices=3), storage=storage, clock=lambda: now[0]) as relay,
        httpx.Client(base_url=relay.url, timeout=10) as c,
    ):
        alice, mallory = register(c, devices=3), register(c)
        r = c.put("/v1/devices/4", headers=alice.headers(), json={"token": new_token(), "device_list": b64(b"x")})
        assert r.status_code == 409 and r.json()["error"] == "too_many_devices"
        r = c.put("/v1/devices/2", headers=alice.headers(), json={"token": new_token(), "device_list": b64(b"x")})
        assert r.json()["error"] == "device_exists"

        channel = open_channel(c, alice)
        box = f"/v1/provisioning/{channel}"
        assert c.put(box + "/new", json={"body": b64(b"a")}).json() == {"queued": 1}
        assert c.put(box + "/new", json={"body": b64(b"b")}).json() == {"queued": 2}
        assert c.get(box + "/new").json() == {"body": b64(b"a")}
        assert c.get(box + "/new").json() == {"body": b64(b"b")}
        assert c.get(box + "/new").json() == {"body": None}
        assert c.delete(box, headers=mallory.headers()).status_code == 404
        assert c.delete(box, headers=alice.headers(2)).status_code == 200
        assert c.get(box + "/new").status_code == 404

        # concurrency: the caps hold and each message is served once
        channel = open_channel(c, alice)
        box = f"/v1/provisioning/{channel}"

        async def race():
            async with httpx.AsyncClient(base_url=relay.url, timeout=10) as ac:
                opens = await asyncio.gather(
                    *[ac.post("/v1/provisioning", json={}, headers=alice.headers()) for _ in range(6)]
                )
                puts = await asyncio.gather(
                    *[ac.put(box + "/existing", json={"body": b64(b"%d" % i)}) for i in range(12)]
                )
                takes = await asyncio.gather(*[ac.get(box + "/existing") for _ in range(12)])
                return opens, puts, takes

        opens, puts, takes = asyncio.run(race())
        assert sorted(r.status_code for r in opens) == [201] * 2 + [409] * 4
        assert sorted(r.status_code for r in puts) == [200] * 8 + [429] * 4
        served = [r.json()["body"] for r in takes if r.json()["body"] is not None]
        assert len(served) == len(set(served)) == 8

        now[0] += 601  # every channel has expired
        assert c.get(box + "/existing").status_code == 404
        open_channel(c, alice)  # expired ones no longer count


def test_blob_upload_and_ranged_download_on_postgres(pg_live):
    data = os.urandom(3 * 1024 * 1024 + 5)
    with httpx.Client(base_url=pg_live.url, timeout=30) as c:
        alice, bob = register(c), register(c)
        blob = c.post("/v1/blobs", json={"size": len(data)}, headers=alice.headers()).json()
        assert blob["parts"] == 1
        r = c.put(
            f"/v1/blobs/{blob['blob_id']}/parts/0",
            content=data,
            headers={**alice.headers(), "Content-Type": "application/octet-stream"},
        )
        assert r.json() == {"received": [0], "complete": True}
        r = c.post(f"/v1/blobs/{blob['blob_id']}/complete", headers=alice.headers())
        import hashlib

        assert r.json()["sha256"] == hashlib.sha256(data).hexdigest()
        url = f"/v1/blobs/{blob['blob_id']}"
        assert c.get(url, headers=bob.headers()).content == data
        r = c.get(url, headers={**bob.headers(), "Range": "bytes=10-19"})
        assert r.status_code == 206 and r.content == data[10:20]
        assert c.delete(url, headers=bob.headers()).status_code == 404
        assert c.delete(url, headers=alice.headers()).status_code == 200
        assert c.get(url, headers=bob.headers()).status_code == 404


def test_handles_codes_and_private_lookup_on_postgres(tmp_path, pg_schema):
    """The handles table on PostgreSQL: claims, codes (file verifier), wrong tries, transfer
    by verification, receive off, removal; and lookups that leave no trace in any table."""
    import psycopg

    from imsg_relay.storage.postgres import PostgresStorage

    from .test_reachable import codes_in, traces_of

    codes = tmp_path / "codes.txt"
    storage = PostgresStorage(PG, schema=pg_schema, pool_size=4)
    settings = relay_settings(tmp_path / "data", verifier=f"file:{codes}")
    with ThreadRelay(settings, storage=storage) as relay, httpx.Client(base_url=relay.url, timeout=10) as c:
        alice, bob, carol = register(c, "alice@example.com"), register(c), register(c)

        def claim(who, handle):
            r = c.post("/v1/handles", json={"handle": handle, "label": b64(b"l")}, headers=who.headers())
            assert r.status_code == 200, r.text
            return [code for h, code in codes_in(codes) if h == handle][-1]

        code = claim(alice, "+15551239999")
        wrong = f"{(int(code) + 1) % 1_000_000:06d}"
        r = c.post("/v1/handles/verify", json={"handle": "+15551239999", "code": wrong}, headers=alice.headers())
        assert r.status_code == 403 and r.json()["tries_left"] == 4
        assert (
            c.post("/v1/handles/verify", json={"handle": "+15551239999", "code": code}, headers=alice.headers()).json()[
                "state"
            ]
            == "verified"
        )
        assert private_lookup(c, carol, "+15551239999") == alice.account_id
        code = claim(bob, "+15551239999")  # the number went to bob
        assert (
            c.post(
                "/v1/handles/verify", json={"handle": "+15551239999", "code": code}, headers=bob.headers()
            ).status_code
            == 200
        )
        assert private_lookup(c, carol, "+15551239999") == bob.account_id
        [row] = [h for h in c.get("/v1/handles", headers=bob.headers()).json()["handles"] if h["state"] == "verified"]
        c.patch(f"/v1/handles/{row['id']}", json={"receiving": False}, headers=bob.headers())
        assert private_lookup(c, carol, "+15551239999") is None
        assert c.delete(f"/v1/handles/{row['id']}", headers=bob.headers()).status_code == 200
        with psycopg.connect(PG) as conn:
            conn.execute(f'SET search_path TO "{pg_schema}"')

            def counts() -> dict[str, int]:
                tables = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (pg_schema,))
                return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for (t,) in tables.fetchall()}

            before = counts()
            for h in ("+15558880000", "nobody@example.com", "alice@example.com"):
                private_lookup(c, carol, h)
            assert counts() == before
            dump = b"".join(
                repr(row).encode()
                for (t,) in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = %s", (pg_schema,)
                ).fetchall()
                for row in conn.execute(f'SELECT * FROM "{t}"').fetchall()
            )
            # bytea values come back as bytes; repr shows them escaped, so check hex too
            hexdump = b"".join(
                bytes(v).hex().encode()
                for (t,) in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = %s", (pg_schema,)
                ).fetchall()
                for row in conn.execute(f'SELECT * FROM "{t}"').fetchall()
                for v in row
                if isinstance(v, (bytes, memoryview))
            )
        for h in ("+15558880000", "nobody@example.com"):
            for trace in traces_of(h, tmp_path / "data"):
                assert trace not in dump and trace.hex().encode() not in hexdump, (h, trace)
        assert b"alice@example.com" not in dump and b"+15551239999" not in dump


def test_sealed_access_and_sealed_sends_on_postgres(pg_live, pg_schema):
    """The sealed_access table: a verifier (never the key), the flag, COALESCE on update."""
    import psycopg

    from imsg_relay.sealed import access_verifier

    key = bytes(range(16))
    with httpx.Client(base_url=pg_live.url, timeout=10) as c:
        bob = register(c, devices=2)
        r = c.put("/v1/sealed/access", headers=bob.headers(), json={"access_key": b64(key), "allow_anyone": False})
        assert r.json() == {"access_key_set": True, "allow_anyone": False}
        body = {"message_id": new_message_id(), "messages": [{"device_id": d, "body": b64(b"s")} for d in (1, 2)]}
        url = f"/v1/sealed/messages/{bob.account_id}"
        assert c.put(url, json=body).status_code == 401
        assert c.put(url, json=body, headers={"Unidentified-Access-Key": b64(bytes(16))}).status_code == 401
        assert c.put(url, json=body, headers={"Unidentified-Access-Key": b64(key)}).json()["stored"] == 2
        assert c.put("/v1/sealed/access", headers=bob.headers(), json={"allow_anyone": True}).json() == {
            "access_key_set": True,
            "allow_anyone": True,
        }
        assert c.put(url, json={**body, "message_id": new_message_id()}).json()["stored"] == 2
        assert len(c.get("/v1/messages", headers=bob.headers()).json()["messages"]) == 2
    with psycopg.connect(PG) as conn:
        conn.execute(f'SET search_path TO "{pg_schema}"')
        rows = conn.execute("SELECT account_id, access_verifier, allow_anyone FROM sealed_access").fetchall()
    assert rows == [(bob.account_id, access_verifier(key), True)]


def test_profiles_on_postgres_hold_no_name_or_photo(pg_live, pg_schema, tmp_path):
    """Issue 7 on PostgreSQL: real clients share a name and photo through the relay; the
    profile row is replaced on rotation and no table of the schema holds a name or photo
    byte in the clear (every column of every row, searched)."""
    import psycopg

    from imsg.client import Client
    from imsg.protocol import profile as pf

    name, photo = "Hypatia Unmistakable-Name", b"\xff\xd8\xff\xe0" + os.urandom(6000)
    (tmp_path / "p.jpg").write_bytes(photo)
    with Client.open(tmp_path / "a", relay=pg_live.url) as alice, Client.open(tmp_path / "b", relay=pg_live.url) as bob:
        alice.init("alice@example.com")
        bob.init("bob@example.com")
        alice.contacts_add("bob@example.com")
        alice.profile_set(name, tmp_path / "p.jpg")
        alice.send("bob@example.com", "hello")
        bob.receive()
        assert next(c for c in bob.contacts() if c.handle == "alice@example.com").profile_name == name
        old_key = bob.store.contact_by_handle("alice@example.com").profile_key
        alice.set_share_policy("off")
        alice_id = alice.whoami().account_id
        new_key = alice.store.load_account().profile_key
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{pg_schema}"')
        rows = conn.execute("SELECT account_id, key_id, body FROM profiles").fetchall()
        assert [(r[0], bytes(r[1])) for r in rows] == [(alice_id, pf.key_id(new_key, alice_id))]
        with pytest.raises(pf.DecryptionError):
            pf.open_(old_key, alice_id, bytes(rows[0][2]))
        assert pf.open_(new_key, alice_id, bytes(rows[0][2]))[1] == pf.Profile(name, photo)
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (pg_schema,)
            )
        ]
        assert "profiles" in tables
        needles = [name.encode(), photo[:48], photo[3000:3048], photo[-48:]]
        for table in tables:
            for record in conn.execute(f'SELECT * FROM "{table}"').fetchall():
                for value in record:
                    data = bytes(value) if isinstance(value, (bytes, memoryview)) else str(value).encode()
                    assert not any(n in data for n in needles), (table, value)


def test_migration_to_voprf_tags_drops_old_handle_rows_on_postgres(tmp_path, pg_schema):
    """A database from before migration 3 (here: no relay_schema rows at all, as before
    versioning; its tags are mode-0x00 OPRF outputs) loses its handle rows on start; a
    migrated database keeps them on restart."""
    import psycopg
    from starlette.testclient import TestClient

    from imsg_relay.app import create_app
    from imsg_relay.storage.postgres import PostgresStorage

    def app():
        return create_app(relay_settings(tmp_path), storage=PostgresStorage(PG, schema=pg_schema, pool_size=2))

    with TestClient(app()) as c:
        alice = register(c)
        c.post("/v1/handles", json={"handle": "+15551231111", "label": b64(os.urandom(60))}, headers=alice.headers())
        assert len(c.get("/v1/handles", headers=alice.headers()).json()["handles"]) >= 1
    with TestClient(app()) as c:  # migrated already: kept
        assert len(c.get("/v1/handles", headers=alice.headers()).json()["handles"]) >= 1
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f'DROP TABLE "{pg_schema}".relay_schema')  # as a schema-5 database has none
    with TestClient(app()) as c:
        assert c.get("/v1/handles", headers=alice.headers()).json() == {"handles": []}
        assert c.get(f"/v1/accounts/{alice.account_id}").status_code == 200  # the rest stays
    with psycopg.connect(PG, autocommit=True) as conn:
        assert conn.execute(f'SELECT max(version) FROM "{pg_schema}".relay_schema').fetchone() == (3,)
