"""The `imsg-relay serve` process: its stdout line, clean shutdown, durability under
SIGKILL (R1, scaled down) and what it leaves on disk and in its log (privacy)."""

from __future__ import annotations

import base64
import random
import sqlite3
import threading
import time

import httpx

from .helpers import b64, new_message_id, private_lookup, register
from support.relays import ProcessRelay


def test_serve_port_0_prints_url_and_stops_cleanly_on_sigterm(tmp_path):
    relay = ProcessRelay(tmp_path / "data").start()
    try:
        assert relay.url.startswith("http://127.0.0.1:")
        port = int(relay.url.rsplit(":", 1)[1])
        assert port > 0
        assert httpx.get(relay.url + "/v1/health").json()["status"] == "ok"
    finally:
        code = relay.terminate()
    assert code == 0
    assert relay.proc.stdout.read() == b""  # nothing but the one line on stdout


def _sender(url_box, alice, bob, acked, stop, errors):
    """Send continuously; remember each message id the relay acknowledged with 2xx."""
    client = None
    while not stop.is_set():
        url = url_box[0]
        if client is None or str(client.base_url).rstrip("/") != url:
            client = httpx.Client(base_url=url, timeout=5)
        mid = new_message_id()
        try:
            r = client.put(
                f"/v1/messages/{bob.account_id}",
                headers=alice.headers(),
                json={"message_id": mid, "messages": [{"device_id": 1, "body": b64(mid.encode())}]},
            )
        except httpx.HTTPError:
            client = None
            time.sleep(0.02)
            continue
        if r.status_code == 200:
            acked.append(mid)
        elif r.status_code != 503:
            errors.append(r.status_code)


def test_sigkill_loses_nothing_acknowledged(tmp_path):
    data = tmp_path / "data"
    relay = ProcessRelay(data).start()
    pairs = []
    with httpx.Client(base_url=relay.url) as c:
        for _ in range(4):
            pairs.append((register(c), register(c)))
    url_box = [relay.url]
    stop = threading.Event()
    acked: list[list[str]] = [[] for _ in pairs]
    errors: list[int] = []
    threads = [
        threading.Thread(target=_sender, args=(url_box, a, b, acked[i], stop, errors)) for i, (a, b) in enumerate(pairs)
    ]
    for t in threads:
        t.start()
    rng = random.Random(7)
    try:
        for _ in range(4):
            time.sleep(rng.uniform(0.4, 1.2))
            relay.kill()
            with sqlite3.connect(data / "relay.db") as db:
                assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            restarted = time.monotonic()
            relay = ProcessRelay(data).start()
            assert time.monotonic() - restarted < 5
            url_box[0] = relay.url
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    try:
        assert not errors
        assert sum(len(a) for a in acked) > 100  # the test did exercise the relay
        with httpx.Client(base_url=relay.url, timeout=10) as c:
            for (_alice, bob), mine in zip(pairs, acked, strict=True):
                seen = set()
                while True:
                    got = c.get("/v1/messages?limit=500", headers=bob.headers()).json()
                    ids = [m["message_id"] for m in got["messages"]]
                    for m in got["messages"]:
                        assert base64.b64decode(m["body"]) == m["message_id"].encode()
                    seen.update(ids)
                    if not ids:
                        break
                    c.post("/v1/messages/ack", json={"message_ids": ids}, headers=bob.headers())
                lost = set(mine) - seen
                assert not lost, f"{len(lost)} acknowledged messages lost"
    finally:
        assert relay.terminate() == 0
    with sqlite3.connect(data / "relay.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_database_and_log_hold_no_handles_tokens_or_addresses(tmp_path):
    data = tmp_path / "data"
    log_path = tmp_path / "relay.log"
    relay = ProcessRelay(data, log_path=log_path).start()
    handles = ["alice.liddell@example.com", "+15550001111"]
    try:
        with httpx.Client(base_url=relay.url, timeout=10) as c:
            alice, bob = register(c, handles[0]), register(c, handles[1], devices=2)
            assert private_lookup(c, alice, handles[1]) == bob.account_id
            assert private_lookup(c, alice, "carol@example.com") is None
            keys = {
                "signed_prekey": {"key_id": 1, "public_key": b64(b"k"), "signature": b64(b"s")},
                "one_time": [{"key_id": 2, "public_key": b64(b"o")}],
            }
            c.put("/v1/keys", json=keys, headers=bob.headers())
            c.get(f"/v1/keys/{bob.account_id}", headers=alice.headers())
            for _ in range(3):
                mid = new_message_id()
                c.put(
                    f"/v1/messages/{bob.account_id}",
                    headers=alice.headers(),
                    json={"message_id": mid, "messages": [{"device_id": d, "body": b64(b"c")} for d in (1, 2)]},
                )
                c.get("/v1/messages", headers=bob.headers(2))
                c.post("/v1/messages/ack", json={"message_ids": [mid]}, headers=bob.headers(2))
            # failures log too; none of them may echo what they were sent
            c.post(
                "/v1/accounts",
                content=b'{"handle": "' + handles[0].encode() + b'"',
                headers={"Content-Type": "application/json"},
            )
            c.get("/v1/messages", headers={"Authorization": "Bearer " + alice.tokens[1][:-1] + "A"})
            c.post("/v1/handles", json={"handle": 5}, headers=bob.headers())
    finally:
        assert relay.terminate() == 0
    secrets_ = [h.encode() for h in handles]
    for ident in (alice, bob):
        for token in ident.tokens.values():
            secrets_.append(token.encode())
            secrets_.append(base64.urlsafe_b64decode(token + "="))
    secrets_.append(b"127.0.0.1")
    blobs = {p.name: p.read_bytes() for p in data.iterdir() if p.name.startswith("relay.db")}
    blobs["stderr"] = log_path.read_bytes()
    for name, blob in blobs.items():
        for s in secrets_:
            assert s not in blob, f"{s!r} found in {name}"
    assert b"relay accepting connections" in blobs["stderr"]  # the log was captured
