"""Against a real uvicorn server on a loopback socket (port 0), with concurrent clients."""

from __future__ import annotations

import asyncio
import time

import httpx

from .helpers import b64, flood_until_answered, new_message_id, register


def _keys_body(n: int) -> dict:
    return {
        "signed_prekey": {"key_id": 1, "public_key": b64(b"spk"), "signature": b64(b"s")},
        "kem_last_resort": {"key_id": 1, "public_key": b64(b"lr"), "signature": b64(b"s")},
        "one_time": [{"key_id": i, "public_key": b64(b"otk-%d" % i)} for i in range(n)],
        "kem_one_time": [{"key_id": i, "public_key": b64(b"kem-%d" % i), "signature": b64(b"s")} for i in range(n)],
    }


def test_long_poll_wakes_when_a_message_arrives(live):
    with httpx.Client(base_url=live.url) as c:
        alice, bob = register(c), register(c)

    async def scenario():
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as c:
            waiting = asyncio.create_task(c.get("/v1/messages?wait=20", headers=bob.headers()))
            await asyncio.sleep(0.3)  # the fetch is now parked on an empty mailbox
            assert not waiting.done()
            sent_at = time.monotonic()
            r = await c.put(
                f"/v1/messages/{bob.account_id}",
                headers=alice.headers(),
                json={"message_id": new_message_id(), "messages": [{"device_id": 1, "body": b64(b"ping")}]},
            )
            assert r.status_code == 200
            got = await waiting
            return time.monotonic() - sent_at, got

    elapsed, got = asyncio.run(scenario())
    assert got.status_code == 200
    assert len(got.json()["messages"]) == 1
    # Woken by the push, not by the 20 s wait running out. (How fast is a benchmark's
    # question: scripts/bench_relay measures delivery p50; a tight bound here flakes on a
    # busy 2-core machine.)
    assert elapsed < 2.0, f"long poll answered {elapsed * 1000:.0f} ms after the send"


def test_long_poll_ends_empty_when_wait_runs_out(live):
    with httpx.Client(base_url=live.url, timeout=10) as c:
        bob = register(c)
        start = time.monotonic()
        r = c.get("/v1/messages?wait=1", headers=bob.headers())
        assert r.json() == {"messages": [], "more": False}
        assert 0.9 < time.monotonic() - start < 3


def test_concurrent_bundle_fetches_get_distinct_one_time_keys(live):
    with httpx.Client(base_url=live.url) as c:
        alice, bob = register(c), register(c)
        assert c.put("/v1/keys", json=_keys_body(10), headers=bob.headers()).status_code == 200

    async def scenario():
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as c:
            return await asyncio.gather(
                *[c.get(f"/v1/keys/{bob.account_id}", headers=alice.headers()) for _ in range(15)]
            )

    answers = [r.json()["devices"][0] for r in asyncio.run(scenario())]
    one_time = [a["one_time"]["key_id"] for a in answers if a["one_time"]]
    kem = [a["kem_prekey"]["key_id"] for a in answers if not a["kem_prekey"]["last_resort"]]
    assert sorted(one_time) == list(range(10))  # each served once, none lost
    assert sorted(kem) == list(range(10))
    assert sum(a["kem_prekey"]["last_resort"] for a in answers) == 5


def test_same_message_id_three_times_concurrently_r2(live):
    with httpx.Client(base_url=live.url) as c:
        alice, bob = register(c), register(c, devices=2)
    mid = new_message_id()
    payload = {"message_id": mid, "messages": [{"device_id": d, "body": b64(b"x")} for d in (1, 2)]}

    async def scenario():
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as c:
            return await asyncio.gather(
                *[c.put(f"/v1/messages/{bob.account_id}", json=payload, headers=alice.headers()) for _ in range(3)]
            )

    answers = asyncio.run(scenario())
    assert {r.status_code for r in answers} == {200}
    assert len({r.content for r in answers}) == 1
    with httpx.Client(base_url=live.url) as c:
        for d in (1, 2):
            msgs = c.get("/v1/messages", headers=bob.headers(d)).json()["messages"]
            assert [m["message_id"] for m in msgs] == [mid]


def test_streamed_body_past_the_cap_is_refused_before_the_end(live):
    """A chunked body with no Content-Length: 413 arrives while the client still sends."""
    answer, sent = flood_until_answered(
        live.port,
        b"POST /v1/accounts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 4 * 1024 * 1024  # refused soon after the 1 MiB cap, not after the end
