"""The relay's sealed-sender routes: key chain, sender certificates, access settings, and
sealed sends (401 without the access key, per-recipient rate limit, 409, de-duplication)."""

from __future__ import annotations

import base64

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from imsg_relay.sealed import (
    KEYS_FILE,
    LABEL_RELAY_KEY,
    LABEL_SENDER_CERTIFICATE,
    access_verifier,
    rotate_keys,
)

from .helpers import b64, new_message_id, register
from support.relays import ThreadRelay, relay_settings

KEY = bytes(range(16))
IDENTITY = b"\x05" + bytes(range(32))


def sealed_send(c, to, key: bytes | None, devices=(1,), message_id=None, body=b"\x01\x02" + bytes(2046)):
    headers = {"Unidentified-Access-Key": base64.b64encode(key).decode()} if key is not None else {}
    return c.put(
        f"/v1/sealed/messages/{to.account_id}",
        headers=headers,
        json={
            "message_id": message_id or new_message_id(),
            "messages": [{"device_id": d, "body": b64(body)} for d in devices],
        },
    )


@pytest.fixture
def live(tmp_path):
    with ThreadRelay(relay_settings(tmp_path, sealed_rate=0.1, sealed_burst=5.0)) as relay:
        relay.data_dir = tmp_path
        yield relay


def test_key_chain_and_certificates(live):
    with httpx.Client(base_url=live.url, timeout=10) as c:
        keys = c.get("/v1/sealed/keys").json()["keys"]  # no credential needed
        assert len(keys) == 1 and keys[0]["endorsement"] is None
        alice = register(c)
        assert c.post("/v1/sealed/certificate", json={"identity_key": b64(IDENTITY)}).status_code == 401
        r = c.post("/v1/sealed/certificate", headers=alice.headers(), json={"identity_key": b64(b"\x06" + bytes(32))})
        assert r.status_code == 400
        r = c.post("/v1/sealed/certificate", headers=alice.headers(), json={"identity_key": b64(IDENTITY)})
        assert r.status_code == 200
        cert = base64.b64decode(r.json()["certificate"])
        body, sig = cert[:-64], cert[-64:]
        assert body[9:25].hex() == alice.account_id and body[25:29] == b"\x00\x00\x00\x01"
        assert body[29:62] == IDENTITY and int.from_bytes(body[62:70], "big") == r.json()["expires_at"]
        pub = base64.b64decode(keys[0]["public_key"])
        Ed25519PublicKey.from_public_bytes(pub[1:]).verify(sig, LABEL_SENDER_CERTIFICATE + body)
    # A rotation: the new key is endorsed by the old one.
    rotate_keys(live.data_dir / KEYS_FILE)
    live.app.state.relay._sealed_keys = None  # what a restart does
    with httpx.Client(base_url=live.url, timeout=10) as c:
        k1, k2 = c.get("/v1/sealed/keys").json()["keys"]
    old = Ed25519PublicKey.from_public_bytes(base64.b64decode(k1["public_key"])[1:])
    old.verify(base64.b64decode(k2["endorsement"]), LABEL_RELAY_KEY + base64.b64decode(k2["public_key"]))


def test_access_settings_and_sealed_sends(live):
    with httpx.Client(base_url=live.url, timeout=10) as c:
        alice, bob = register(c), register(c, devices=2)
        assert c.get("/v1/sealed/access", headers=bob.headers()).json() == {
            "access_key_set": False,
            "allow_anyone": False,
        }
        assert (
            c.put(
                "/v1/sealed/access", headers=bob.headers(), json={"access_key": b64(b"short"), "allow_anyone": False}
            ).status_code
            == 400
        )
        r = c.put("/v1/sealed/access", headers=bob.headers(), json={"access_key": b64(KEY), "allow_anyone": False})
        assert r.json() == {"access_key_set": True, "allow_anyone": False}
        # No key, a wrong key, a malformed header, an unknown account: one uniform 401.
        for r in (
            sealed_send(c, bob, None, (1, 2)),
            sealed_send(c, bob, bytes(16), (1, 2)),
            c.put(
                f"/v1/sealed/messages/{bob.account_id}",
                headers={"Unidentified-Access-Key": "%%"},
                json={"message_id": new_message_id(), "messages": []},
            ),
        ):
            assert r.status_code == 401 and r.json()["error"] == "access_denied"
        ghost = type(bob)(**{**bob.__dict__, "account_id": "ab" * 16})
        assert sealed_send(c, ghost, KEY).status_code == 401
        # The right key: stored for both devices, no Authorization header anywhere.
        mid = new_message_id()
        r = sealed_send(c, bob, KEY, (1, 2), mid)
        assert r.status_code == 200 and r.json() == {"message_id": mid, "stored": 2}
    # Rate limit per recipient (5 in 50 s here), for allowed sends only (issue 12: refused
    # attempts have a bucket of their own): bob has had 1 stored, so four more pass.
    with httpx.Client(base_url=live.url, timeout=10) as c:
        for _ in range(4):
            assert sealed_send(c, bob, KEY, (1, 2)).status_code == 200
        r = sealed_send(c, bob, KEY, (1, 2))
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        c.put("/v1/sealed/access", headers=alice.headers(), json={"allow_anyone": True})
        assert sealed_send(c, alice, None).status_code == 200  # allow-anyone, no key
        # Wrong devices: 409 with the lists, as for identified sends.
        r = sealed_send(c, alice, None, (1, 2))
        assert r.status_code == 409 and r.json()["extra"] == [2]
        # Keeping the verifier: a PUT without access_key changes only the flag.
        r = c.put("/v1/sealed/access", headers=bob.headers(), json={"allow_anyone": True})
        assert r.json() == {"access_key_set": True, "allow_anyone": True}


def test_sealed_send_is_deduplicated_and_capped(tmp_path):
    with ThreadRelay(relay_settings(tmp_path)) as live, httpx.Client(base_url=live.url, timeout=10) as c:
        bob = register(c)
        c.put("/v1/sealed/access", headers=bob.headers(), json={"access_key": b64(KEY), "allow_anyone": False})
        mid = new_message_id()
        for _ in range(3):
            assert sealed_send(c, bob, KEY, message_id=mid).json()["stored"] == 1
        got = c.get("/v1/messages", headers=bob.headers()).json()["messages"]
        assert [m["message_id"] for m in got] == [mid]
        r = sealed_send(c, bob, KEY, body=bytes(96 * 1024 + 1))
        assert r.status_code == 413


def test_openapi_documents_the_sealed_routes(live):
    with httpx.Client(base_url=live.url, timeout=10) as c:
        doc = c.get("/openapi.json").json()
    op = doc["paths"]["/v1/sealed/messages/{account_id}"]["put"]
    assert op["security"] == [] and "401" in op["responses"] and "429" in op["responses"]
    assert any(p["in"] == "header" and p["name"] == "Unidentified-Access-Key" for p in op["parameters"])
    assert doc["paths"]["/v1/sealed/keys"]["get"]["security"] == []
    assert doc["paths"]["/v1/sealed/certificate"]["post"]["security"] == [{"bearer": []}]


def test_access_verifier_is_not_the_key():
    v = access_verifier(KEY)
    assert len(v) == 32 and KEY not in v
