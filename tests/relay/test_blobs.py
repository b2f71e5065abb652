"""Attachment blobs: create, upload in parts (any order, resumable), complete, download with
ranges, delete, quota and size limits, and the 30-day purge of rows and files."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import sqlite3
import stat

import httpx
import pytest
from starlette.testclient import TestClient

from imsg_relay.app import create_app
from imsg_relay.blobs.base import BlobMissing
from imsg_relay.sweeper import sweep_blobs

from .helpers import flood_until_answered, register
from support.relays import relay_settings

PART = 4096
DAY = 86_400.0
OCTET = {"Content-Type": "application/octet-stream"}


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["filesystem", "s3"])
def blob_settings(request, tmp_path):
    """The HTTP blob suite runs on each blob store: files in the data directory, and an
    S3 bucket on moto's S3 server (issue 16)."""
    s3 = {"blobs_url": request.getfixturevalue("s3_url")} if request.param == "s3" else {}
    return relay_settings(tmp_path, blob_part_size=PART, max_blob=64 * PART, blob_quota=128 * PART, **s3)


def stored(settings, blob_id):
    """The bytes the relay's blob store holds for `blob_id`, None when it holds none."""
    from imsg_relay.backends import build_blobs

    store = build_blobs(settings)

    async def read():
        try:
            reader = await store.open_read(blob_id)
        except BlobMissing:
            return None
        try:
            return b"".join([c async for c in reader.chunks(0, reader.size, 1 << 20)])
        finally:
            await reader.close()

    return asyncio.run(read())


@pytest.fixture
def bclient(blob_settings):
    with TestClient(create_app(blob_settings)) as c:
        yield c


def create(client, ident, size, device=1):
    r = client.post("/v1/blobs", json={"size": size}, headers=ident.headers(device))
    assert r.status_code == 201, r.text
    return r.json()


def put_part(client, ident, blob, index, data, device=1):
    return client.put(
        f"/v1/blobs/{blob['blob_id']}/parts/{index}", content=data, headers={**ident.headers(device), **OCTET}
    )


def part_of(data, blob, index):
    return data[index * blob["part_size"] : (index + 1) * blob["part_size"]]


def upload(client, ident, data, order=None):
    blob = create(client, ident, len(data))
    indices = list(range(blob["parts"])) if order is None else order
    for i in indices:
        r = put_part(client, ident, blob, i, part_of(data, blob, i))
        assert r.status_code == 200, r.text
    r = client.post(f"/v1/blobs/{blob['blob_id']}/complete", headers=ident.headers())
    assert r.status_code == 200, r.text
    return blob, r.json()


def blob_path(settings, blob_id):
    return settings.data_dir / "blobs" / blob_id[:2] / blob_id


def test_round_trip_parts_in_any_order(bclient, blob_settings, caplog):
    caplog.set_level(logging.DEBUG)
    alice, bob = register(bclient), register(bclient)
    data = os.urandom(3 * PART + 100)
    blob = create(bclient, alice, len(data))
    assert blob["size"] == len(data) and blob["part_size"] == PART and blob["parts"] == 4
    assert len(blob["blob_id"]) == 32 and int(blob["blob_id"], 16) >= 0
    assert blob["expires_at"] > 0
    answers = [put_part(bclient, alice, blob, i, part_of(data, blob, i)).json() for i in (2, 0, 3, 1)]
    assert answers[0] == {"received": [2], "complete": False}
    assert answers[2] == {"received": [0, 2, 3], "complete": False}
    assert answers[3] == {"received": [0, 1, 2, 3], "complete": True}
    # not downloadable before complete
    assert bclient.get(f"/v1/blobs/{blob['blob_id']}", headers=bob.headers()).status_code == 404
    r = bclient.post(f"/v1/blobs/{blob['blob_id']}/complete", headers=alice.headers())
    assert r.status_code == 200
    assert r.json() == {"blob_id": blob["blob_id"], "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    # completing again answers the same
    again = bclient.post(f"/v1/blobs/{blob['blob_id']}/complete", headers=alice.headers())
    assert again.status_code == 200 and again.json() == r.json()
    # any registered device downloads it: the id is the capability
    r = bclient.get(f"/v1/blobs/{blob['blob_id']}", headers=bob.headers())
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-length"] == str(len(data))
    assert r.headers["accept-ranges"] == "bytes"
    status = bclient.get(f"/v1/blobs/{blob['blob_id']}/status", headers=alice.headers()).json()
    assert status == {
        "blob_id": blob["blob_id"],
        "size": len(data),
        "part_size": PART,
        "parts": 4,
        "received": [0, 1, 2, 3],
        "complete": True,
        "expires_at": blob["expires_at"],
    }
    assert stored(blob_settings, blob["blob_id"]) == data  # exactly the ciphertext
    if blob_settings.blobs_url is None:
        # the file: DATA/blobs/<2 hex>/<id>, 0600 in 0700 directories
        path = blob_path(blob_settings, blob["blob_id"])
        assert path.read_bytes() == data
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700
    # a completed blob is read-only
    r = put_part(bclient, alice, blob, 0, part_of(data, blob, 0))
    assert r.status_code == 409 and r.json()["error"] == "blob_complete"
    # the relay's logs hold no blob id (the test client's own request log does)
    # (nor do boto3's below WARNING, where `imsg-relay serve` keeps them: they name keys;
    # werkzeug's are moto's S3 server, the test's stand-in for the operator's object store)
    quiet = ("httpx", "botocore", "boto3", "s3transfer", "urllib3", "werkzeug")
    relay_logs = [r.getMessage() for r in caplog.records if not r.name.startswith(quiet)]
    assert not any(blob["blob_id"] in line for line in relay_logs)


def test_one_byte_and_exact_part_sizes(bclient):
    alice = register(bclient)
    for size in (1, PART, 2 * PART, PART + 1):
        data = os.urandom(size)
        blob, done = upload(bclient, alice, data)
        assert blob["parts"] == -(-size // PART)
        assert bclient.get(f"/v1/blobs/{blob['blob_id']}", headers=alice.headers()).content == data


def test_ranges(bclient):
    alice, bob = register(bclient), register(bclient)
    data = os.urandom(2 * PART + 10)
    blob, _ = upload(bclient, alice, data)
    url = f"/v1/blobs/{blob['blob_id']}"
    n = len(data)

    def get(rng):
        return bclient.get(url, headers={**bob.headers(), "Range": rng})

    cases = {
        "bytes=0-9": (0, 10),
        f"bytes=100-{PART + 50}": (100, PART + 51),
        "bytes=-7": (n - 7, n),
        f"bytes={PART}-": (PART, n),
        f"bytes=5-{n + 1000}": (5, n),
        f"bytes=-{n + 5}": (0, n),
        f"bytes={n - 1}-{n - 1}": (n - 1, n),
    }
    for rng, (a, b) in cases.items():
        r = get(rng)
        assert r.status_code == 206, rng
        assert r.content == data[a:b], rng
        assert r.headers["content-range"] == f"bytes {a}-{b - 1}/{n}", rng
        assert r.headers["content-length"] == str(b - a)
    for rng in (f"bytes={n}-", f"bytes={n + 10}-{n + 20}", "bytes=-0"):
        r = get(rng)
        assert r.status_code == 416, rng
        assert r.json()["error"] == "range_not_satisfiable"
        assert r.headers["content-range"] == f"bytes */{n}"
    # several ranges, another unit, or a malformed range: ignored, the whole blob
    for rng in ("bytes=0-1,5-6", "items=0-1", "bytes=5-2", "bytes=x-y", "bytes=-", "bytes"):
        r = get(rng)
        assert r.status_code == 200 and r.content == data, rng
    head = bclient.head(url, headers=bob.headers())
    assert head.status_code == 200 and head.headers["content-length"] == str(n)


def test_resume_sends_only_missing_parts(bclient):
    alice = register(bclient)
    data = os.urandom(5 * PART + 3)
    blob = create(bclient, alice, len(data))
    for i in (0, 3):  # the first attempt stopped after two parts
        assert put_part(bclient, alice, blob, i, part_of(data, blob, i)).status_code == 200
    url = f"/v1/blobs/{blob['blob_id']}"
    status = bclient.get(f"{url}/status", headers=alice.headers()).json()
    assert status["received"] == [0, 3] and status["complete"] is False
    assert status["parts"] == 6
    # a resuming client: status, then only the missing parts
    puts = 0
    for i in range(status["parts"]):
        if i in status["received"]:
            continue
        puts += 1
        last = put_part(bclient, alice, blob, i, part_of(data, blob, i)).json()
    assert puts == 4 and last == {"received": list(range(6)), "complete": True}
    # re-sending a received part is allowed (same bytes)
    assert put_part(bclient, alice, blob, 3, part_of(data, blob, 3)).status_code == 200
    assert bclient.post(f"{url}/complete", headers=alice.headers()).status_code == 200
    assert bclient.get(url, headers=alice.headers()).content == data


def test_part_length_content_type_and_index_are_checked(bclient):
    alice = register(bclient)
    data = os.urandom(2 * PART + 5)
    blob = create(bclient, alice, len(data))
    r = put_part(bclient, alice, blob, 0, data[: PART + 1])
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
    r = put_part(bclient, alice, blob, 0, data[: PART - 1])
    assert r.status_code == 400
    r = put_part(bclient, alice, blob, 2, data[2 * PART :] + b"x")  # the last: the remainder
    assert r.status_code == 413 and r.json()["limit"] == 5
    r = put_part(bclient, alice, blob, 2, data[2 * PART : -1])
    assert r.status_code == 400

    def chunks(total):
        for _ in range(total // 512):
            yield b"y" * 512

    # streamed without Content-Length: refused as it overflows, or when it ends short
    r = bclient.put(
        f"/v1/blobs/{blob['blob_id']}/parts/0", content=chunks(PART + 2048), headers={**alice.headers(), **OCTET}
    )
    assert "content-length" not in r.request.headers
    assert r.status_code == 413
    r = bclient.put(
        f"/v1/blobs/{blob['blob_id']}/parts/0", content=chunks(PART - 512), headers={**alice.headers(), **OCTET}
    )
    assert r.status_code == 400
    assert bclient.get(f"/v1/blobs/{blob['blob_id']}/status", headers=alice.headers()).json()["received"] == []
    r = put_part(bclient, alice, blob, 3, b"z")
    assert r.status_code == 400  # past the last part
    r = bclient.put(
        f"/v1/blobs/{blob['blob_id']}/parts/0",
        content=data[:PART],
        headers={**alice.headers(), "Content-Type": "application/json"},
    )
    assert r.status_code == 415
    r = bclient.put(f"/v1/blobs/{'0' * 32}/parts/0", content=data[:PART], headers={**alice.headers(), **OCTET})
    assert r.status_code == 404
    for bad in ("-1", "x", "1.0"):
        r = bclient.put(f"/v1/blobs/{blob['blob_id']}/parts/{bad}", content=b"", headers={**alice.headers(), **OCTET})
        assert r.status_code == 400, bad
    r = bclient.get(f"/v1/blobs/{'A' * 32}", headers=alice.headers())
    assert r.status_code == 400


def test_other_accounts_cannot_write_but_anyone_can_read(bclient):
    alice, mallory = register(bclient, devices=2), register(bclient)
    data = os.urandom(PART + 1)
    blob = create(bclient, alice, len(data))
    url = f"/v1/blobs/{blob['blob_id']}"
    assert put_part(bclient, mallory, blob, 0, data[:PART]).status_code == 404
    assert bclient.get(f"{url}/status", headers=mallory.headers()).status_code == 404
    # another device of the uploading account may continue the upload
    assert put_part(bclient, alice, blob, 0, data[:PART], device=2).status_code == 200
    assert put_part(bclient, alice, blob, 1, data[PART:]).status_code == 200
    assert bclient.post(f"{url}/complete", headers=mallory.headers()).status_code == 404
    assert bclient.post(f"{url}/complete", headers=alice.headers(2)).status_code == 200
    assert bclient.delete(url, headers=mallory.headers()).status_code == 404
    assert bclient.get(url, headers=mallory.headers()).content == data
    # Issue 12: downloads need no credential (the id is the capability), so a download
    # does not join its reader to the uploader; a token sent anyway is not even looked at.
    assert bclient.get(url).content == data
    assert bclient.head(url).status_code == 200
    assert bclient.get(url, headers={"Authorization": "Bearer " + "A" * 43}).content == data
    assert bclient.post("/v1/blobs", json={"size": 1}).status_code == 401  # uploads stay credentialed


def test_incomplete_upload_lists_missing_parts(bclient):
    alice = register(bclient)
    data = os.urandom(4 * PART)
    blob = create(bclient, alice, len(data))
    put_part(bclient, alice, blob, 1, part_of(data, blob, 1))
    r = bclient.post(f"/v1/blobs/{blob['blob_id']}/complete", headers=alice.headers())
    assert r.status_code == 409
    assert r.json()["error"] == "incomplete" and r.json()["missing"] == [0, 2, 3]


def test_size_limit_and_quota(bclient, blob_settings):
    alice = register(bclient)
    for size in (0, -1, "1", 1.5, None):
        assert bclient.post("/v1/blobs", json={"size": size}, headers=alice.headers()).status_code == 400
    r = bclient.post("/v1/blobs", json={"size": blob_settings.max_blob + 1}, headers=alice.headers())
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
    assert r.json()["limit"] == blob_settings.max_blob
    quota = blob_settings.blob_quota  # 128 parts; the max blob is 64 parts
    first = create(bclient, alice, blob_settings.max_blob)  # incomplete: counts all the same
    create(bclient, alice, blob_settings.max_blob - 10)
    r = bclient.post("/v1/blobs", json={"size": 11}, headers=alice.headers())
    assert r.status_code == 413 and r.json()["error"] == "quota_exceeded"
    assert r.json()["limit"] == quota and r.json()["used"] == quota - 10
    assert create(bclient, alice, 10)["size"] == 10  # exactly up to the quota
    # another account has its own quota; deleting frees this one's at once
    assert create(bclient, register(bclient), 11)
    r = bclient.delete(f"/v1/blobs/{first['blob_id']}", headers=alice.headers())
    assert r.status_code == 200 and r.json() == {"blob_id": first["blob_id"]}
    assert create(bclient, alice, 11)


def test_delete_removes_row_and_file_at_once(bclient, blob_settings):
    alice = register(bclient)
    data = os.urandom(PART)
    blob, _ = upload(bclient, alice, data)
    assert stored(blob_settings, blob["blob_id"]) == data
    url = f"/v1/blobs/{blob['blob_id']}"
    assert bclient.delete(url, headers=alice.headers()).status_code == 200
    assert stored(blob_settings, blob["blob_id"]) is None
    db = sqlite3.connect(blob_settings.data_dir / "relay.db")
    assert db.execute("SELECT count(*) FROM blobs").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM blob_parts").fetchone()[0] == 0
    assert bclient.get(url, headers=alice.headers()).status_code == 404
    assert bclient.delete(url, headers=alice.headers()).status_code == 404


def _files(settings):
    root = settings.data_dir / "blobs"
    return sorted(p.name for p in root.rglob("*") if p.is_file())


def test_expired_blobs_are_not_served_and_are_swept_in_batches(tmp_path):
    clock = Clock()
    settings = relay_settings(tmp_path, blob_part_size=PART, sweep_interval=3600)
    app = create_app(settings, clock=clock)
    with TestClient(app) as client:
        alice, bob = register(client), register(client)
        old = [upload(client, alice, os.urandom(PART + i))[0]["blob_id"] for i in range(5)]
        partial = create(client, alice, 3 * PART)  # never finished
        put_part(client, alice, partial, 0, os.urandom(PART))
        old.append(partial["blob_id"])
        clock.now += 29 * DAY
        recent, _ = upload(client, alice, b"recent")
        clock.now += 1 * DAY + 1
        assert len(_files(settings)) == 7
        for blob_id in old:  # past 30 days: gone for every read, before any sweep
            assert client.get(f"/v1/blobs/{blob_id}", headers=bob.headers()).status_code == 404
            assert client.get(f"/v1/blobs/{blob_id}/status", headers=alice.headers()).status_code == 404
        r = put_part(client, alice, partial, 1, os.urandom(PART))
        assert r.status_code == 404
        # expired blobs no longer count against the quota
        relay = app.state.relay
        batches = []
        real = relay.storage.expired_blobs

        async def recording(live_after_ms, limit):
            ids = await real(live_after_ms, limit)
            batches.append(len(ids))
            return ids

        relay.storage.expired_blobs = recording
        live_after = relay.now_ms() - settings.blob_retention_ms
        deleted = client.portal.call(sweep_blobs, relay.storage, relay.blobs, live_after, 4)
        assert deleted == 6 and batches == [4, 2]
        assert _files(settings) == [recent["blob_id"]]
        db = sqlite3.connect(tmp_path / "relay.db")
        assert [r[0] for r in db.execute("SELECT blob_id FROM blobs")] == [recent["blob_id"]]
        assert db.execute("SELECT count(*) FROM blob_parts WHERE blob_id != ?", (recent["blob_id"],)).fetchone()[0] == 0
        assert client.get(f"/v1/blobs/{recent['blob_id']}", headers=bob.headers()).content == b"recent"


def test_the_running_sweeper_purges_blobs(tmp_path):
    clock = Clock()
    settings = relay_settings(tmp_path, blob_part_size=PART, sweep_interval=0.05)
    with TestClient(create_app(settings, clock=clock)) as client:
        alice = register(client)
        upload(client, alice, os.urandom(10))
        create(client, alice, 5)
        assert len(_files(settings)) == 2
        clock.now += 30 * DAY + 1
        db = sqlite3.connect(tmp_path / "relay.db")

        def rows() -> int:
            return db.execute("SELECT count(*) FROM blobs").fetchone()[0]

        # The sweep removes files and rows in two steps: wait for both (bounded), never a
        # fixed time, so a loaded machine only makes the wait longer.
        for _ in range(1000):
            if not _files(settings) and rows() == 0:
                break
            client.portal.call(asyncio.sleep, 0.02)
        assert _files(settings) == []
        assert rows() == 0


def test_part_streamed_past_its_size_is_refused_before_the_end(tmp_path):
    """Chunked, no Content-Length: 413 arrives while the client still sends, long before
    the 64 MiB it would send (the part is 1 MiB)."""
    from support.relays import ThreadRelay

    settings = relay_settings(tmp_path, blob_part_size=1024 * 1024)
    with ThreadRelay(settings) as live, httpx.Client(base_url=live.url) as c:
        alice = register(c)
        blob = create(c, alice, 4 * 1024 * 1024)
        answer, sent = flood_until_answered(
            live.port,
            f"PUT /v1/blobs/{blob['blob_id']}/parts/0 HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {alice.tokens[1]}\r\n"
            "Content-Type: application/octet-stream\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode(),
        )
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert sent < 4 * 1024 * 1024
        status = c.get(f"/v1/blobs/{blob['blob_id']}/status", headers=alice.headers()).json()
        assert status["received"] == []


def test_parts_uploaded_concurrently(tmp_path):
    from support.relays import ThreadRelay

    settings = relay_settings(tmp_path, blob_part_size=64 * 1024)
    data = random.Random(7).randbytes(20 * 64 * 1024 + 77)

    async def main(url):
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            blob = (await c.post("/v1/blobs", json={"size": len(data)}, headers=alice.headers())).json()
            rs = await asyncio.gather(
                *[
                    c.put(
                        f"/v1/blobs/{blob['blob_id']}/parts/{i}",
                        content=part_of(data, blob, i),
                        headers={**alice.headers(), **OCTET},
                    )
                    for i in range(blob["parts"])
                ]
            )
            assert all(r.status_code == 200 for r in rs)
            done = await c.post(f"/v1/blobs/{blob['blob_id']}/complete", headers=alice.headers())
            assert done.json()["sha256"] == hashlib.sha256(data).hexdigest()
            got = await c.get(f"/v1/blobs/{blob['blob_id']}", headers=alice.headers())
            assert got.content == data

    with ThreadRelay(settings) as live:
        with httpx.Client(base_url=live.url) as c:
            alice = register(c)
        asyncio.run(main(live.url))


def _proc_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(field)


def _chunk(k):
    return random.Random(k).randbytes(65536)


def test_64_mib_blob_streams_through_a_relay_process_in_constant_memory(tmp_path):
    """Upload 64 MiB in 8 MiB parts (streamed, chunked), read it back whole and in ranges;
    the relay process's peak RSS grows by less than 20 MB over its warmed-up RSS."""
    from support.relays import ProcessRelay

    total = 64 * 1024 * 1024
    relay = ProcessRelay(tmp_path / "relay").start()
    try:
        pid = relay.proc.pid
        with httpx.Client(base_url=relay.url, timeout=60) as c:
            alice = register(c)
            # warm up every code path with a small blob first
            small = create(c, alice, 10)
            put_part(c, alice, small, 0, b"0123456789")
            c.post(f"/v1/blobs/{small['blob_id']}/complete", headers=alice.headers())
            assert (
                c.get(
                    f"/v1/blobs/{small['blob_id']}",
                    headers=alice.headers(),
                ).content
                == b"0123456789"
            )
            before = _proc_kib(pid, "VmRSS")

            blob = create(c, alice, total)
            part = blob["part_size"]
            assert part == 8 * 1024 * 1024 and blob["parts"] == 8
            per_part = part // 65536
            digest = hashlib.sha256()
            for i in range(blob["parts"]):
                for k in range(i * per_part, (i + 1) * per_part):
                    digest.update(_chunk(k))

                def body(i=i):
                    for k in range(i * per_part, (i + 1) * per_part):
                        yield _chunk(k)

                r = c.put(
                    f"/v1/blobs/{blob['blob_id']}/parts/{i}", content=body(), headers={**alice.headers(), **OCTET}
                )
                assert r.status_code == 200, r.text
            r = c.post(f"/v1/blobs/{blob['blob_id']}/complete", headers=alice.headers())
            assert r.json()["sha256"] == digest.hexdigest()
            url = f"/v1/blobs/{blob['blob_id']}"
            got = hashlib.sha256()
            with c.stream("GET", url, headers=alice.headers()) as resp:
                assert resp.headers["content-length"] == str(total)
                for data in resp.iter_bytes():
                    got.update(data)
            assert got.hexdigest() == digest.hexdigest()
            start = 5 * 65536 + 100  # a range across chunk boundaries, and the tail
            r = c.get(url, headers={**alice.headers(), "Range": f"bytes={start}-{start + 99999}"})
            expected = b"".join(_chunk(k) for k in range(5, 8))[100 : 100 + 100000]
            assert r.status_code == 206 and r.content == expected
            r = c.get(url, headers={**alice.headers(), "Range": "bytes=-1000"})
            assert r.content == _chunk(total // 65536 - 1)[-1000:]
            with c.stream("GET", url, headers={**alice.headers(), "Range": f"bytes={total // 2}-"}) as resp:
                assert resp.status_code == 206
                assert sum(len(d) for d in resp.iter_bytes()) == total // 2
            peak = _proc_kib(pid, "VmHWM")
        assert (peak - before) < 20 * 1024, (before, peak)
    finally:
        relay.terminate()


def test_openapi_describes_binary_bodies(bclient):
    doc = bclient.get("/openapi.json").json()
    put = doc["paths"]["/v1/blobs/{blob_id}/parts/{index}"]["put"]
    assert list(put["requestBody"]["content"]) == ["application/octet-stream"]
    get = doc["paths"]["/v1/blobs/{blob_id}"]["get"]
    for status in ("200", "206"):
        assert list(get["responses"][status]["content"]) == ["application/octet-stream"]
    assert "416" in get["responses"]
    assert doc["components"]["schemas"]["BlobBytes"] == {"type": "string", "format": "binary"}
    assert "413" in doc["paths"]["/v1/blobs"]["post"]["responses"]
