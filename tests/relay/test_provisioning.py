"""Provisioning channels (device linking) and the device cap: docs/RELAY-API.md."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import time

import httpx
import pytest
from starlette.testclient import TestClient

from imsg_relay.app import create_app
from imsg_relay.settings import Settings
from imsg_relay.sweeper import sweep_channels

from .helpers import b64, new_token, open_channel, register
from support.relays import relay_settings

KIB = 1024


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _put(client, channel, box, data=b"sealed"):
    return client.put(f"/v1/provisioning/{channel}/{box}", json={"body": b64(data)})


def _get(client, channel, box, wait=0):
    return client.get(f"/v1/provisioning/{channel}/{box}?wait={wait}")


def _body(r):
    assert r.status_code == 200, r.text
    value = r.json()["body"]
    return None if value is None else base64.b64decode(value)


def test_open_channel_shape_and_expiry(tmp_path):
    clock = Clock()
    with TestClient(create_app(relay_settings(tmp_path), clock=clock)) as client:
        alice = register(client)
        r = client.post("/v1/provisioning", headers=alice.headers(), json={})
        assert r.status_code == 201
        body = r.json()
        assert set(body) == {"channel", "expires_at"}
        assert len(body["channel"]) == 16 and int(body["channel"], 16) >= 0
        assert body["channel"] == body["channel"].lower()
        assert body["expires_at"] == int(clock.now * 1000) + 600_000
        # an empty body is the same as {}
        r = client.post("/v1/provisioning", headers=alice.headers())
        assert r.status_code == 201 and r.json()["channel"] != body["channel"]


def test_open_channel_needs_a_device_and_an_object(client):
    assert client.post("/v1/provisioning", json={}).status_code == 401
    alice = register(client)
    r = client.post("/v1/provisioning", headers=alice.headers(), json=[])
    assert r.status_code == 400 and r.json()["error"] == "bad_request"


def test_exchange_both_ways_read_once_oldest_first(client):
    alice = register(client)
    channel = open_channel(client, alice)
    assert _put(client, channel, "new", b"one").json() == {"queued": 1}
    assert _put(client, channel, "new", b"two").json() == {"queued": 2}
    assert _put(client, channel, "existing", b"reply").json() == {"queued": 1}
    assert _body(_get(client, channel, "new")) == b"one"
    assert _body(_get(client, channel, "new")) == b"two"
    assert _body(_get(client, channel, "new")) is None  # read once: gone
    assert _body(_get(client, channel, "existing")) == b"reply"
    assert _body(_get(client, channel, "existing")) is None


def test_unknown_channel_is_404_everywhere(client):
    alice = register(client)
    for r in (
        _put(client, "0123456789abcdef", "new"),
        _get(client, "0123456789abcdef", "new"),
        _get(client, "0123456789abcdef", "existing", wait=1),
        client.delete("/v1/provisioning/0123456789abcdef", headers=alice.headers()),
    ):
        assert r.status_code == 404, r.text
        assert r.json()["error"] == "not_found"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/provisioning/{c}/old",
        "/v1/provisioning/{c}/NEW",
        "/v1/provisioning/0123456789ABCDEF/new",
        "/v1/provisioning/0123456789abcde/new",
        "/v1/provisioning/0123456789abcdef0/new",
    ],
)
def test_bad_box_or_channel_is_400(client, path):
    channel = open_channel(client, register(client))
    path = path.replace("{c}", channel)
    for r in (client.put(path, json={"body": b64(b"x")}), client.get(path)):
        assert r.status_code == 400, (path, r.text)
        assert r.json()["error"] == "bad_request"


def test_wrong_method_and_missing_box_are_json_errors(client):
    channel = open_channel(client, register(client))
    r = client.get(f"/v1/provisioning/{channel}")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
    r = client.get(f"/v1/provisioning/{channel}/new/extra")
    assert r.status_code == 404 and r.json()["error"] == "not_found"


def test_expired_channel_is_404_and_frees_its_slot(tmp_path):
    clock = Clock()
    with TestClient(create_app(relay_settings(tmp_path), clock=clock)) as client:
        alice = register(client)
        channel = open_channel(client, alice)
        assert _put(client, channel, "new", b"x").status_code == 200
        clock.now += 599.9
        assert _put(client, channel, "existing", b"y").status_code == 200
        clock.now += 0.1  # exactly at expires_at: closed
        assert _get(client, channel, "new").status_code == 404
        assert _put(client, channel, "new").status_code == 404
        assert client.delete(f"/v1/provisioning/{channel}", headers=alice.headers()).status_code == 404
        # an expired channel does not count towards the per-account cap
        for _ in range(3):
            open_channel(client, alice)


def test_ttl_setting(tmp_path):
    clock = Clock()
    settings = relay_settings(tmp_path, provisioning_ttl_seconds=30)
    with TestClient(create_app(settings, clock=clock)) as client:
        alice = register(client)
        r = client.post("/v1/provisioning", headers=alice.headers(), json={})
        assert r.json()["expires_at"] == int(clock.now * 1000) + 30_000
        clock.now += 31
        assert _put(client, r.json()["channel"], "new").status_code == 404
    env = Settings.from_env({"IMSG_RELAY_PROVISIONING_TTL_SECONDS": "120", "IMSG_RELAY_MAX_DEVICES": "4"})
    assert env.provisioning_ttl_seconds == 120 and env.max_devices == 4
    assert Settings().provisioning_ttl_seconds == 600 and Settings().max_devices == 10


def test_box_holds_at_most_8(client):
    channel = open_channel(client, register(client))
    for i in range(8):
        assert _put(client, channel, "new", b"%d" % i).json() == {"queued": i + 1}
    r = _put(client, channel, "new", b"ninth")
    assert r.status_code == 429
    assert r.json()["error"] == "box_full" and r.json()["limit"] == 8
    assert int(r.headers["Retry-After"]) >= 1
    assert _put(client, channel, "existing").status_code == 200  # the other box is its own
    assert _body(_get(client, channel, "new")) == b"0"
    assert _put(client, channel, "new", b"ninth").json() == {"queued": 8}


def test_message_over_256_kib_is_413(client):
    channel = open_channel(client, register(client))
    assert _put(client, channel, "new", b"x" * 256 * KIB).status_code == 200
    assert len(_body(_get(client, channel, "new"))) == 256 * KIB
    r = _put(client, channel, "new", b"x" * (256 * KIB + 1))
    assert r.status_code == 413
    assert r.json()["error"] == "payload_too_large" and r.json()["limit"] == 256 * KIB
    # past the route's 400 KiB request cap: refused on Content-Length, before reading
    r = client.put(
        f"/v1/provisioning/{channel}/new", content=b"x" * (400 * KIB + 1), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 413 and r.json()["limit"] == 400 * KIB


def test_route_cap_is_its_own_not_max_body(tmp_path):
    with TestClient(create_app(relay_settings(tmp_path, max_body=4096))) as client:
        alice = register(client)
        channel = open_channel(client, alice)
        assert _put(client, channel, "new", b"x" * 200 * KIB).status_code == 200
        # every other route keeps the general cap
        r = client.post(
            "/v1/provisioning", content=b" " * 5000, headers={**alice.headers(), "Content-Type": "application/json"}
        )
        assert r.status_code == 413


def test_delete_closes_at_once_and_only_for_the_owner(client):
    alice = register(client, devices=2)
    mallory = register(client)
    channel = open_channel(client, alice, device_id=1)
    assert _put(client, channel, "new", b"pending").status_code == 200
    r = client.delete(f"/v1/provisioning/{channel}", headers=mallory.headers())
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    assert client.delete(f"/v1/provisioning/{channel}").status_code == 401
    assert _body(_get(client, channel, "new")) == b"pending"  # untouched by mallory
    assert _put(client, channel, "new", b"again").status_code == 200
    # any device of the creating account may close it
    r = client.delete(f"/v1/provisioning/{channel}", headers=alice.headers(2))
    assert r.status_code == 200 and r.json() == {"channel": channel}
    assert _get(client, channel, "new").status_code == 404
    assert client.delete(f"/v1/provisioning/{channel}", headers=alice.headers()).status_code == 404


def test_at_most_3_open_channels_per_account(client):
    alice, bob = register(client), register(client)
    channels = [open_channel(client, alice) for _ in range(3)]
    r = client.post("/v1/provisioning", headers=alice.headers(), json={})
    assert r.status_code == 409
    assert r.json()["error"] == "too_many_channels" and r.json()["limit"] == 3
    open_channel(client, bob)  # another account is not affected
    assert client.delete(f"/v1/provisioning/{channels[0]}", headers=alice.headers()).status_code == 200
    open_channel(client, alice)


def test_unauthenticated_routes_are_rate_limited_per_channel(tmp_path):
    settings = relay_settings(tmp_path, provisioning_rate=5.0, provisioning_burst=5.0)
    with TestClient(create_app(settings)) as client:
        alice = register(client)
        a, b = open_channel(client, alice), open_channel(client, alice)
        statuses = [_get(client, a, "new").status_code for _ in range(6)]
        assert statuses == [200] * 5 + [429]
        r = _put(client, a, "new")
        assert r.status_code == 429 and r.json()["error"] == "rate_limited"
        assert int(r.headers["Retry-After"]) >= 1
        assert _get(client, b, "new").status_code == 200  # another channel has its own
        # unknown channel ids are counted too, by id (guessing costs the global bucket)
        assert [_get(client, "f" * 16, "new").status_code for _ in range(6)][-1] == 429


def test_unauthenticated_routes_have_a_global_bucket(tmp_path):
    settings = relay_settings(tmp_path, provisioning_global_rate=4.0, provisioning_global_burst=4.0)
    with TestClient(create_app(settings)) as client:
        alice = register(client)
        channels = [open_channel(client, alice) for _ in range(3)]
        statuses = [_get(client, c, "new").status_code for c in channels + channels[:2]]
        assert statuses == [200] * 4 + [429]
        # the authenticated routes are not part of it
        assert client.delete(f"/v1/provisioning/{channels[0]}", headers=alice.headers()).status_code == 200


def test_long_poll_wakes_on_put_and_on_close(live):
    with httpx.Client(base_url=live.url) as c:
        alice = register(c)
        channel = open_channel(c, alice)

    async def scenario():
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as c:
            waiting = asyncio.create_task(c.get(f"/v1/provisioning/{channel}/existing?wait=20"))
            other = asyncio.create_task(c.get(f"/v1/provisioning/{channel}/new?wait=20"))
            await asyncio.sleep(0.3)
            assert not waiting.done() and not other.done()
            put_at = time.monotonic()
            r = await c.put(f"/v1/provisioning/{channel}/existing", json={"body": b64(b"hello")})
            assert r.status_code == 200
            got = await waiting
            woke = time.monotonic() - put_at
            await asyncio.sleep(0.1)
            assert not other.done()  # a put into one box does not answer the other
            closed_at = time.monotonic()
            r = await c.delete(f"/v1/provisioning/{channel}", headers=alice.headers())
            assert r.status_code == 200
            gone = await other
            return woke, got, time.monotonic() - closed_at, gone

    woke, got, after_close, gone = asyncio.run(scenario())
    assert _body(got) == b"hello"
    # Woken by the put and by the close, not by the wait running out (speed is benchmarked).
    assert woke < 2.0
    assert gone.status_code == 404 and after_close < 2.0


def test_long_poll_times_out_with_null(client):
    channel = open_channel(client, register(client))
    started = time.monotonic()
    assert _body(_get(client, channel, "new", wait=1)) is None
    assert 0.9 < time.monotonic() - started < 3


def test_sweeper_deletes_expired_channels_and_their_messages(tmp_path):
    clock = Clock()
    app = create_app(relay_settings(tmp_path), clock=clock)
    with TestClient(app) as client:
        alice = register(client)
        old = open_channel(client, alice)
        _put(client, old, "new", b"old")
        clock.now += 300
        young = open_channel(client, alice)
        _put(client, young, "existing", b"young")
        clock.now += 301  # old has expired, young has not
        db = sqlite3.connect(tmp_path / "relay.db")
        assert db.execute("SELECT count(*) FROM provisioning_messages").fetchone()[0] == 2
        relay = app.state.relay
        assert client.portal.call(sweep_channels, relay.storage, relay.now_ms()) == 1
        assert [r[0] for r in db.execute("SELECT channel FROM provisioning_channels")] == [young]
        assert [r[0] for r in db.execute("SELECT body FROM provisioning_messages")] == [b"young"]


def test_message_rows_hold_no_account(tmp_path):
    with TestClient(create_app(relay_settings(tmp_path))) as client:
        channel = open_channel(client, register(client))
        _put(client, channel, "new")
    db = sqlite3.connect(tmp_path / "relay.db")
    columns = [r[1] for r in db.execute("PRAGMA table_info(provisioning_messages)")]
    assert columns == ["seq", "channel", "box", "body"]


# the device cap


def test_the_11th_device_is_too_many(client):
    alice = register(client, devices=10)
    r = client.put(
        "/v1/devices/11", headers=alice.headers(), json={"token": new_token(), "device_list": b64(b"list-11")}
    )
    assert r.status_code == 409
    assert r.json()["error"] == "too_many_devices" and r.json()["limit"] == 10
    assert "remove one" in r.json()["message"]
    account = client.get(f"/v1/accounts/{alice.account_id}", headers=alice.headers()).json()
    assert account["devices"] == list(range(1, 11))
    assert base64.b64decode(account["device_list"]) == b"list-10"  # not replaced
    # an id the account has is still device_exists, even at the cap
    r = client.put("/v1/devices/3", headers=alice.headers(), json={"token": new_token(), "device_list": b64(b"x")})
    assert r.json()["error"] == "device_exists"
    assert client.delete("/v1/devices/10", headers=alice.headers()).status_code == 200
    r = client.put(
        "/v1/devices/11", headers=alice.headers(), json={"token": new_token(), "device_list": b64(b"list-11")}
    )
    assert r.status_code == 201


def test_device_cap_setting(tmp_path):
    with TestClient(create_app(relay_settings(tmp_path, max_devices=2))) as client:
        alice = register(client, devices=2)
        r = client.put("/v1/devices/3", headers=alice.headers(), json={"token": new_token(), "device_list": b64(b"x")})
        assert r.status_code == 409 and r.json()["error"] == "too_many_devices"
