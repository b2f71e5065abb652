"""The HTTP contract of docs/RELAY-API.md, route by route, on the ASGI app."""

from __future__ import annotations

import base64

import pytest

from .helpers import (
    b64,
    new_identity,
    new_message_id,
    new_token,
    private_lookup,
    register,
    registration,
    send,
)
from support.relays import relay_settings


def test_health(client):
    r = client.get("/v1/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "version": "1"}


# registration


def test_register_and_read_account(client):
    alice = register(client, "alice@example.com")
    r = client.get(f"/v1/accounts/{alice.account_id}", headers=alice.headers())
    assert r.status_code == 200
    body = r.json()
    assert body["account_id"] == alice.account_id
    assert base64.b64decode(body["account_key"]) == alice.account_key
    assert body["devices"] == [1]


def test_register_rejects_account_id_not_derived_from_key(client):
    ident = new_identity()
    payload = registration(ident)
    payload["account_id"] = "0" * 32
    r = client.post("/v1/accounts", json=payload)
    assert r.status_code == 400
    assert r.json()["error"] == "bad_request"
    assert "derived" in r.json()["message"]


@pytest.mark.parametrize("key", [b"\x05" + bytes(32), b"\x06" + bytes(31), b"\x06" + bytes(33)])
def test_register_rejects_badly_typed_account_key(client, key):
    ident = new_identity()
    payload = registration(ident)
    payload["account_key"] = b64(key)
    from .helpers import account_id_of

    payload["account_id"] = account_id_of(key)
    r = client.post("/v1/accounts", json=payload)
    assert r.status_code == 400


def test_register_twice_is_account_exists(client):
    ident = new_identity()
    assert client.post("/v1/accounts", json=registration(ident)).status_code == 201
    payload = registration(ident)
    payload["handle"] = "other@example.com"
    payload["token"] = new_token()
    r = client.post("/v1/accounts", json=payload)
    assert r.status_code == 409
    assert r.json()["error"] == "account_exists"


def test_register_taken_handle_is_handle_taken(client):
    register(client, "+15551234567")
    r = client.post("/v1/accounts", json=registration(new_identity("+15551234567")))
    assert r.status_code == 409
    assert r.json()["error"] == "handle_taken"


@pytest.mark.parametrize("handle", ["Alice@example.com", "alice", "+1 555", "a" * 250 + "@x.io", "a@b@c", ""])
def test_register_rejects_non_canonical_handles(client, handle):
    ident = new_identity()
    ident.handle = handle
    r = client.post("/v1/accounts", json=registration(ident))
    assert r.status_code == 400


def test_private_lookup_finds_account_and_nobody_for_unknown(client):
    alice = register(client, "alice@example.com")
    bob = register(client)
    assert private_lookup(client, bob, "alice@example.com") == alice.account_id
    assert private_lookup(client, bob, "nobody@example.com") is None
    # the plaintext lookup of earlier versions is gone
    assert client.post("/v1/lookup", json={"handle": "alice@example.com"}, headers=bob.headers()).status_code == 404


def test_unknown_account_is_404(client):
    alice = register(client)
    r = client.get(f"/v1/accounts/{'ab' * 16}", headers=alice.headers())
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = send(client, alice, new_identity())
    assert r.status_code == 404 and r.json()["error"] == "not_found"


# devices


def test_add_and_remove_device(client):
    alice = register(client, devices=2)
    r = client.get(f"/v1/accounts/{alice.account_id}", headers=alice.headers(2))
    assert r.json()["devices"] == [1, 2]
    r = client.put("/v1/devices/2", headers=alice.headers(1), json={"token": new_token(), "device_list": b64(b"x")})
    assert r.status_code == 409 and r.json()["error"] == "device_exists"
    r = client.request(
        "DELETE", "/v1/devices/2", headers=alice.headers(1), json={"device_list": b64(b"list-after-removal")}
    )
    assert r.status_code == 200
    account = client.get(f"/v1/accounts/{alice.account_id}", headers=alice.headers()).json()
    assert account["devices"] == [1]
    assert base64.b64decode(account["device_list"]) == b"list-after-removal"
    # the removed device's token no longer works: revocation takes effect at once
    assert client.get("/v1/keys/count", headers=alice.headers(2)).status_code == 401
    assert client.delete("/v1/devices/7", headers=alice.headers()).status_code == 404


# prekeys


def _keys(first_id: int, n: int, signed: bool) -> list[dict]:
    keys = []
    for i in range(first_id, first_id + n):
        k = {"key_id": i, "public_key": b64(b"pk-%d" % i)}
        if signed:
            k["signature"] = b64(b"sig-%d" % i)
        keys.append(k)
    return keys


def _publish(client, ident, device=1, one_time=2, kem_one_time=1):
    body = {
        "signed_prekey": {"key_id": 1, "public_key": b64(b"spk"), "signature": b64(b"s")},
        "kem_last_resort": {"key_id": 1, "public_key": b64(b"kem-lr"), "signature": b64(b"s2")},
        "one_time": _keys(10, one_time, signed=False),
        "kem_one_time": _keys(100, kem_one_time, signed=True),
    }
    r = client.put("/v1/keys", json=body, headers=ident.headers(device))
    assert r.status_code == 200, r.text
    return r.json()


def test_prekeys_served_once_then_last_resort(client):
    bob = register(client)
    alice = register(client)
    assert _publish(client, bob) == {"one_time": 2, "kem_one_time": 1}
    assert client.get("/v1/keys/count", headers=bob.headers()).json() == {"one_time": 2, "kem_one_time": 1}
    first = client.get(f"/v1/keys/{bob.account_id}", headers=alice.headers()).json()
    dev = first["devices"][0]
    assert dev["one_time"]["key_id"] == 10
    assert dev["kem_prekey"] == {
        "key_id": 100,
        "public_key": b64(b"pk-100"),
        "signature": b64(b"sig-100"),
        "last_resort": False,
    }
    second = client.get(f"/v1/keys/{bob.account_id}", headers=alice.headers()).json()
    dev = second["devices"][0]
    assert dev["one_time"]["key_id"] == 11
    assert dev["kem_prekey"]["last_resort"] is True
    assert base64.b64decode(dev["kem_prekey"]["public_key"]) == b"kem-lr"
    third = client.get(f"/v1/keys/{bob.account_id}", headers=alice.headers()).json()
    assert third["devices"][0]["one_time"] is None
    assert client.get("/v1/keys/count", headers=bob.headers()).json() == {"one_time": 0, "kem_one_time": 0}


def test_bundles_leave_out_devices_without_signed_prekey_and_filter_by_device(client):
    bob = register(client, devices=2)
    _publish(client, bob, device=2)
    r = client.get(f"/v1/keys/{bob.account_id}", headers=bob.headers(1))
    assert [d["device_id"] for d in r.json()["devices"]] == [2]
    r = client.get(f"/v1/keys/{bob.account_id}?device_id=1", headers=bob.headers(1))
    assert r.json()["devices"] == []
    r = client.get(f"/v1/keys/{bob.account_id}?device_id=9", headers=bob.headers(1))
    assert r.status_code == 404


def test_more_than_100_keys_in_a_list_is_413(client):
    bob = register(client)
    r = client.put("/v1/keys", json={"one_time": _keys(1, 101, signed=False)}, headers=bob.headers())
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"


# send, fetch, ack


def test_send_fetch_ack_roundtrip(client):
    alice, bob = register(client), register(client)
    mid = new_message_id()
    r = send(client, alice, bob, b"sealed", mid)
    assert r.status_code == 200
    assert r.json() == {"message_id": mid, "stored": 1}
    got = client.get("/v1/messages", headers=bob.headers()).json()
    assert got["more"] is False
    [m] = got["messages"]
    assert m["message_id"] == mid and base64.b64decode(m["body"]) == b"sealed"
    assert isinstance(m["received_at"], int)
    # not acked: delivered again
    assert len(client.get("/v1/messages", headers=bob.headers()).json()["messages"]) == 1
    r = client.post("/v1/messages/ack", json={"message_ids": [mid]}, headers=bob.headers())
    assert r.json() == {"acked": 1}
    assert client.get("/v1/messages", headers=bob.headers()).json()["messages"] == []


def test_ack_of_unknown_id_is_ok(client):
    bob = register(client)
    r = client.post("/v1/messages/ack", json={"message_ids": [new_message_id()]}, headers=bob.headers())
    assert r.status_code == 200 and r.json() == {"acked": 0}


def test_each_device_has_its_own_copy_r3(client):
    alice, bob = register(client), register(client, devices=3)
    mid = new_message_id()
    assert send(client, alice, bob, b"x", mid).json()["stored"] == 3
    client.post("/v1/messages/ack", json={"message_ids": [mid]}, headers=bob.headers(1))
    assert client.get("/v1/messages", headers=bob.headers(1)).json()["messages"] == []
    for d in (2, 3):
        [m] = client.get("/v1/messages", headers=bob.headers(d)).json()["messages"]
        assert m["message_id"] == mid


def test_device_mismatch_lists_missing_and_extra(client):
    alice, bob = register(client), register(client, devices=2)
    r = send(client, alice, bob, devices=[1, 3])
    assert r.status_code == 409
    assert r.json() == {"error": "device_mismatch", "message": "device list changed", "missing": [2], "extra": [3]}
    assert client.get("/v1/messages", headers=bob.headers(1)).json()["messages"] == []


def test_send_to_own_account_excludes_sending_device(client):
    alice = register(client, devices=3)
    r = send(client, alice, alice, devices=[1, 2, 3], sender_device=1)
    assert r.status_code == 409 and r.json()["extra"] == [1]
    r = send(client, alice, alice, devices=[2, 3], sender_device=1)
    assert r.status_code == 200 and r.json()["stored"] == 2


def test_same_message_id_stores_once_and_answers_the_same(client):
    alice, bob = register(client), register(client)
    mid = new_message_id()
    answers = [send(client, alice, bob, b"x", mid) for _ in range(3)]
    assert {a.status_code for a in answers} == {200}
    assert len({a.content for a in answers}) == 1
    assert len(client.get("/v1/messages", headers=bob.headers()).json()["messages"]) == 1


def test_envelope_over_96_kib_is_413(client):
    alice, bob = register(client), register(client)
    assert send(client, alice, bob, b"x" * 96 * 1024).status_code == 200
    r = send(client, alice, bob, b"x" * (96 * 1024 + 1))
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"


def test_fetch_limit_and_more(client):
    alice, bob = register(client), register(client)
    ids = [new_message_id() for _ in range(5)]
    for mid in ids:
        send(client, alice, bob, b"x", mid)
    got = client.get("/v1/messages?limit=3", headers=bob.headers()).json()
    assert [m["message_id"] for m in got["messages"]] == ids[:3]
    assert got["more"] is True


# errors


def test_missing_malformed_and_unknown_tokens_are_401(client):
    assert client.get("/v1/messages").status_code == 401
    for value in ["Basic abc", "Bearer", "Bearer short", f"Bearer {new_token()}"]:
        r = client.get("/v1/messages", headers={"Authorization": value})
        assert r.status_code == 401
        assert r.json()["error"] == "unauthorized"


def test_unknown_route_and_wrong_method(client):
    r = client.get("/v2/nothing")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = client.delete("/v1/health")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"


@pytest.mark.parametrize(
    "content",
    [
        b"{",
        b"[]",
        b"null",
        b'"x"',
        b"\xff\xfe",
        b"1e999",
        b'{"message_id": 5, "messages": []}',
        b'{"message_id": "' + b"a" * 32 + b'", "messages": "x"}',
        b'{"message_id": "' + b"a" * 32 + b'"}',
        b'{"message_id": "' + b"a" * 32 + b'", "messages": [{"device_id": 1, "body": "!!notbase64"}]}',
        b'{"message_id": "' + b"a" * 32 + b'", "messages": [{"device_id": true, "body": ""}]}',
        b'{"message_id": "' + b"A" * 32 + b'", "messages": []}',
        b"[" * 100_000,
    ],
)
def test_bad_send_bodies_are_400(client, content):
    alice, bob = register(client), register(client)
    r = client.put(
        f"/v1/messages/{bob.account_id}",
        content=content,
        headers={**alice.headers(), "Content-Type": "application/json"},
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "bad_request"


def test_bad_path_and_query_values_are_400(client):
    alice = register(client)
    assert client.get("/v1/accounts/NOT-HEX", headers=alice.headers()).status_code == 400
    for q in ["limit=0", "limit=501", "limit=x", "wait=61", "wait=-1", "limit=+1"]:
        r = client.get(f"/v1/messages?{q}", headers=alice.headers())
        assert r.status_code == 400, q
    assert client.delete("/v1/devices/0", headers=alice.headers()).status_code == 400


def test_non_json_body_is_415(client):
    alice = register(client)
    r = client.post(
        "/v1/handles",
        content=b"handle=x",
        headers={**alice.headers(), "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type"


def test_body_over_cap_is_413_by_content_length(tmp_path):
    from starlette.testclient import TestClient

    from imsg_relay.app import create_app

    with TestClient(create_app(relay_settings(tmp_path, max_body=4096))) as client:
        r = client.post("/v1/accounts", content=b"x" * 5000, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["error"] == "payload_too_large"


def test_chunked_body_over_cap_is_413(tmp_path):
    from starlette.testclient import TestClient

    from imsg_relay.app import create_app

    def chunks():
        for _ in range(100):
            yield b"x" * 1024

    with TestClient(create_app(relay_settings(tmp_path, max_body=4096))) as client:
        r = client.post("/v1/accounts", content=chunks(), headers={"Content-Type": "application/json"})
        assert "content-length" not in r.request.headers
        assert r.status_code == 413 and r.json()["error"] == "payload_too_large"


def test_send_rate_limit_is_429_with_retry_after(tmp_path):
    from starlette.testclient import TestClient

    from imsg_relay.app import create_app

    with TestClient(create_app(relay_settings(tmp_path, send_rate=60.0, send_burst=60.0))) as c:
        alice, bob = register(c), register(c)
        statuses = [send(c, alice, bob).status_code for _ in range(61)]
        assert statuses[:60] == [200] * 60
        assert statuses[60] == 429
        r = send(c, alice, bob)
        assert r.status_code == 429
        assert int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"] == "rate_limited" and r.json()["retry_after"] >= 1
        # another credential is not affected
        carol = register(c)
        assert send(c, carol, bob).status_code == 200


def test_openapi_documents_every_route(client):
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    # /healthz, /readyz and /metrics are for operators, outside the API (docs/DEPLOY.md).
    ops = {"/healthz", "/readyz", "/metrics"}
    routes = {(r.path, m) for r in client.app.routes for m in (r.methods or ()) if m != "HEAD" and r.path not in ops}
    documented = {(p, m.upper()) for p, ops in doc["paths"].items() for m in ops}
    assert routes == documented
    # every $ref resolves
    import json

    text = json.dumps(doc)
    for name in doc["components"]["schemas"]:
        assert f"#/components/schemas/{name}" in text or name == "Error"
    import re

    for ref in re.findall(r'"#/components/schemas/(\w+)"', text):
        assert ref in doc["components"]["schemas"]


def test_405_lists_every_method_of_the_path(client):
    alice = register(client)
    r = client.options("/v1/devices/1", headers=alice.headers())
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
    assert {m.strip() for m in r.headers["Allow"].split(",")} == {"PUT", "DELETE"}
    r = client.post("/v1/provisioning/0123456789abcdef/new")
    assert {m.strip() for m in r.headers["Allow"].split(",")} >= {"PUT", "GET"}


def test_a_static_path_is_not_swallowed_by_a_parametrised_one(client):
    alice = register(client)
    # PUT /v1/messages/{account_id} would match "ack": the path is /v1/messages/ack (POST)
    r = client.put("/v1/messages/ack", headers=alice.headers(), json={"message_id": new_message_id(), "messages": []})
    assert r.status_code == 405 and r.headers["Allow"] == "POST"
    assert client.get("/v1/keys/count", headers=alice.headers()).status_code == 200


@pytest.mark.parametrize("handle", ["a\x1eb@example.com", "a\x02@example.com", "a b@x.io", "a\x85@x.io"])
def test_handles_with_control_characters_are_400(client, handle):
    # the schema's pattern means the same in Python and in ECMA-262 (no \s)
    ident = new_identity()
    ident.handle = handle
    assert client.post("/v1/accounts", json=registration(ident)).status_code == 400
