"""Several workers of one relay, as an operator runs them (issue 16): `imsg-relay serve`
processes sharing PostgreSQL, Redis, an S3 bucket (moto's server) and one key set.

- a long poll on worker A is woken by a send through worker B (Redis pub/sub);
- a blob uploaded through A downloads, ranged, through B (one bucket);
- the retention sweeper running on two workers at once sweeps every expired row exactly
  once (they take turns on an advisory lock).

Skipped, with the reason, when PostgreSQL or Redis is not on loopback.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections import Counter

import httpx
import pytest

from imsg_relay.cli import main

from .helpers import b64, new_message_id, register
from .test_backends import make_schema, pg_url
from .test_ops import _metric
from .test_postgres import PG, REDIS, _redis_reason, pg_reason
from support.relays import ProcessRelay

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(pg_reason is not None, reason=pg_reason or ""),
]
redis_reason = _redis_reason() if pg_reason is None else None

OCTET = {"Content-Type": "application/octet-stream"}


@pytest.fixture
def workers(tmp_path, pg_ns, s3_url):
    """Two `imsg-relay serve` workers of one relay."""
    if redis_reason is not None:
        pytest.skip(redis_reason)
    from .conftest import S3_ENV

    make_schema(pg_ns)
    keys = tmp_path / "relay.keys"
    assert main(["keys", "init", "--out", str(keys)]) == 0
    args = (
        "--database",
        pg_url(pg_ns),
        "--database-pool",
        "4",
        "--push",
        REDIS,
        "--blobs",
        s3_url,
        "--keys",
        str(keys),
    )
    # A Redis channel of their own is not a flag (one relay per Redis is the norm); the
    # mailbox ids are random, so tests sharing the default channel never wake each other.
    started = []
    try:
        for name in ("a", "b"):
            started.append(ProcessRelay(tmp_path / name, args=args, env=S3_ENV).start())
        yield started
    finally:
        for w in started:
            w.stop()


def test_a_long_poll_on_one_worker_is_woken_by_a_send_through_another(workers):
    a, b = workers
    with httpx.Client(base_url=a.url, timeout=10) as ca:
        alice, bob = register(ca), register(ca)

    async def scenario() -> dict:
        # The poll would wait 30 s; the client gives up after 15: only a wake-up answers it.
        async with httpx.AsyncClient(timeout=15) as c:
            poll = asyncio.create_task(c.get(f"{a.url}/v1/messages?wait=30", headers=bob.headers()))
            for _ in range(500):  # until worker A holds the poll (its own gauge says so)
                text = (await c.get(f"{a.url}/metrics")).text
                if _metric(text, "imsg_relay_long_polls_waiting") >= 1:
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("worker A never held the long poll")
            r = await c.put(
                f"{b.url}/v1/messages/{bob.account_id}",
                headers=alice.headers(),
                json={"message_id": new_message_id(), "messages": [{"device_id": 1, "body": b64(b"hi")}]},
            )
            assert r.status_code == 200, r.text
            answer = await poll
            assert answer.status_code == 200
            return answer.json()

    got = asyncio.run(scenario())
    assert [m["body"] for m in got["messages"]] == [b64(b"hi")]


def test_a_blob_uploaded_through_one_worker_downloads_through_another(workers):
    a, b = workers
    data = os.urandom(300_000)
    with httpx.Client(base_url=a.url, timeout=30) as ca, httpx.Client(base_url=b.url, timeout=30) as cb:
        alice, bob = register(ca), register(cb)
        blob = ca.post("/v1/blobs", json={"size": len(data)}, headers=alice.headers()).json()
        part = blob["part_size"]
        for i in range(blob["parts"]):
            # parts alternate between the workers, as a load balancer would spread them
            c = ca if i % 2 == 0 else cb
            r = c.put(
                f"/v1/blobs/{blob['blob_id']}/parts/{i}",
                content=data[i * part : (i + 1) * part],
                headers={**alice.headers(), **OCTET},
            )
            assert r.status_code == 200, r.text
        assert cb.post(f"/v1/blobs/{blob['blob_id']}/complete", json={}, headers=alice.headers()).status_code == 200
        assert cb.get(f"/v1/blobs/{blob['blob_id']}", headers=bob.headers()).content == data
        ranged = ca.get(f"/v1/blobs/{blob['blob_id']}", headers={**bob.headers(), "Range": "bytes=1000-"})
        assert ranged.status_code == 206 and ranged.content == data[1000:]
        assert cb.get("/readyz").json()["blobs"] == "ok"


class CountingBlobStore:
    """The real filesystem store, counting the deletes the sweepers ask for."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.deleted: Counter[str] = Counter()

    async def delete(self, blob_id: str) -> None:
        self.deleted[blob_id] += 1
        await self.inner.delete(blob_id)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_two_sweepers_at_once_sweep_every_expired_row_exactly_once(tmp_path, pg_ns):
    import psycopg

    from imsg_relay.blobs.filesystem import FilesystemBlobStore
    from imsg_relay.storage.postgres import PostgresStorage
    from imsg_relay.sweeper import SWEEP_BATCH, sweep_once

    old, fresh, now = 1_000, 9_000_000, 10_000_000
    n_env, n_blobs = 2 * SWEEP_BATCH + 500, 1200
    blob_ids = [secrets.token_hex(16) for _ in range(n_blobs)]
    store = CountingBlobStore(FilesystemBlobStore(tmp_path / "blobs"))

    async def scenario():
        workers = [PostgresStorage(PG, schema=pg_ns, pool_size=2) for _ in range(2)]
        for w in workers:
            await w.open()
        try:
            async with workers[0]._tx() as conn:
                await conn.execute(
                    "INSERT INTO envelopes (account_id, device_id, message_id, body, received_at)"
                    " SELECT 'acct', 1, 'm' || g, '\\x00', CASE WHEN g <= %s THEN %s ELSE %s END"
                    " FROM generate_series(1, %s) g",
                    (n_env, old, fresh, n_env + 10),
                )
                await conn.execute(
                    "INSERT INTO provisioning_channels SELECT 'ch' || g, 'acct', %s, %s FROM generate_series(1, 1500) g",
                    (old, old + 1),
                )
                for bid in blob_ids:
                    await conn.execute(
                        "INSERT INTO blobs (blob_id, account_id, size, part_size, created_at) VALUES (%s, 'acct', 1, 1, %s)",
                        (bid, old),
                    )
            for bid in blob_ids:
                await store.inner.create(bid, 1)
            # Both workers' sweepers fire at the same moment, twice over.
            runs = []
            for _ in range(2):
                runs += await asyncio.gather(
                    *(sweep_once(w, now, now - old - 1, store, now - old - 1) for w in workers)
                )
            return runs
        finally:
            for w in workers:
                await w.close()

    runs = asyncio.run(scenario())
    done = [r for r in runs if r is not None]
    assert done, "no sweeper had the turn"
    assert sum(r[0] for r in done) == n_env  # each expired envelope counted once
    assert sum(r[1] for r in done) == 1500
    assert sum(r[2] for r in done) == n_blobs
    assert set(store.deleted) == set(blob_ids) and set(store.deleted.values()) == {1}  # no double work
    with psycopg.connect(PG) as conn:
        conn.execute(f'SET search_path TO "{pg_ns}"')
        assert conn.execute("SELECT count(*) FROM envelopes").fetchone() == (10,)  # fresh ones kept
        assert conn.execute("SELECT count(*) FROM provisioning_channels").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM blobs").fetchone() == (0,)
    assert not [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
