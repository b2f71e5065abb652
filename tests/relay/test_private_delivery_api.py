"""Issue 12 on the relay: what names a recipient is served without a credential.

- GET /v1/accounts/{id}: public data, no authentication, limited per target account;
- GET /v1/keys/{id}: authorized by the account's Unidentified-Access-Key (one 401 for every
  failure, limited per target account) or, for the identified fallback, a bearer token;
- PUT /v1/sealed/messages/{id}: a refused attempt is counted in its own bucket, so a flood
  of bad keys neither uses up nor blocks the valid senders' budget (row 8);
- sender certificates live a week (W6).
"""

from __future__ import annotations

import base64

import httpx
import pytest
from starlette.testclient import TestClient

from imsg_relay.app import create_app

from .helpers import b64, new_message_id, register
from .test_api import _publish
from support.relays import relay_settings

KEY = bytes(range(16))


def _key_header(key: bytes) -> dict[str, str]:
    return {"Unidentified-Access-Key": base64.b64encode(key).decode()}


@pytest.fixture
def make(tmp_path):
    opened = []

    def start(**overrides) -> TestClient:
        c = TestClient(create_app(relay_settings(tmp_path / f"relay{len(opened)}", **overrides)))
        c.__enter__()
        opened.append(c)
        return c

    yield start
    for c in opened:
        c.__exit__(None, None, None)


def _set_key(c, who, key=KEY, anyone=False) -> None:
    r = c.put("/v1/sealed/access", headers=who.headers(), json={"access_key": b64(key), "allow_anyone": anyone})
    assert r.status_code == 200


def test_account_read_needs_no_credential_and_is_limited_per_target(make):
    c = make(account_read_rate=0.01, account_read_burst=3)
    alice, bob = register(c), register(c)
    for _ in range(3):
        r = c.get(f"/v1/accounts/{alice.account_id}")  # no Authorization header at all
        assert r.status_code == 200 and r.json()["account_id"] == alice.account_id
    r = c.get(f"/v1/accounts/{alice.account_id}")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert c.get(f"/v1/accounts/{bob.account_id}").status_code == 200  # another target: its own bucket
    assert c.get(f"/v1/accounts/{'ab' * 16}").status_code == 404


def test_account_reads_have_a_relay_wide_limit(make):
    c = make(account_read_global_rate=0.01, account_read_global_burst=2)
    a, b, d = register(c), register(c), register(c)
    assert c.get(f"/v1/accounts/{a.account_id}").status_code == 200
    assert c.get(f"/v1/accounts/{b.account_id}").status_code == 200
    assert c.get(f"/v1/accounts/{d.account_id}").status_code == 429


def test_bundles_with_the_access_key_and_no_credential(make):
    c = make(bundle_rate=0.01, bundle_burst=2)
    alice, bob = register(c), register(c, devices=2)
    _publish(c, bob, 1)
    _publish(c, bob, 2)
    _set_key(c, bob)
    r = c.get(f"/v1/keys/{bob.account_id}", headers=_key_header(KEY))
    assert r.status_code == 200 and sorted(d["device_id"] for d in r.json()["devices"]) == [1, 2]
    # No key, a wrong key, a malformed one, an account with no access key: one 401.
    ghost = "ab" * 16
    for path, headers in (
        (f"/v1/keys/{bob.account_id}", {}),
        (f"/v1/keys/{bob.account_id}", _key_header(bytes(16))),
        (f"/v1/keys/{bob.account_id}", {"Unidentified-Access-Key": "%%"}),
        (f"/v1/keys/{alice.account_id}", _key_header(KEY)),
        (f"/v1/keys/{ghost}", _key_header(KEY)),
    ):
        r = c.get(path, headers=headers)
        assert (r.status_code, r.json()["error"]) == (401, "access_denied"), path
    # Counted per target account: the second good fetch exhausts bob's bucket (2 here).
    assert c.get(f"/v1/keys/{bob.account_id}?device_id=1", headers=_key_header(KEY)).status_code == 200
    assert c.get(f"/v1/keys/{bob.account_id}", headers=_key_header(KEY)).status_code == 429
    # The identified fallback: a bearer token, counted per device as before.
    assert c.get(f"/v1/keys/{bob.account_id}", headers=alice.headers()).status_code == 200
    assert c.get(f"/v1/keys/{bob.account_id}", headers={"Authorization": "Bearer " + "A" * 43}).status_code == 401


def test_allow_anyone_opens_bundles_without_a_key(make):
    c = make()
    bob = register(c)
    _publish(c, bob, 1)
    c.put("/v1/sealed/access", headers=bob.headers(), json={"allow_anyone": True})
    assert c.get(f"/v1/keys/{bob.account_id}").status_code == 200


def _sealed(c, to, key, devices=(1,)):
    headers = _key_header(key) if key is not None else {}
    return c.put(
        f"/v1/sealed/messages/{to.account_id}",
        headers=headers,
        json={
            "message_id": new_message_id(),
            "messages": [{"device_id": d, "body": b64(b"\x01\x02" + bytes(2046))} for d in devices],
        },
    )


def test_a_flood_of_bad_keys_does_not_stop_a_valid_sender_row8(make):
    """Row 8: anyone, with no account, sent a recipient sealed attempts with wrong keys
    until its budget was gone; every sender with mail for it was then refused (429)."""
    c = make(sealed_rate=0.01, sealed_burst=3, sealed_refused_rate=0.01, sealed_refused_burst=5)
    bob = register(c)
    _set_key(c, bob)
    codes = [_sealed(c, bob, bytes(16)).status_code for _ in range(20)]
    assert codes[:5] == [401] * 5 and set(codes[5:]) == {429}  # the flood meets its own limit
    for _ in range(3):  # the valid sender still has its whole budget
        assert _sealed(c, bob, KEY).status_code == 200
    assert _sealed(c, bob, KEY).status_code == 429  # ... and the budget is still a limit


def test_sender_certificates_live_a_week_by_default(make):
    c = make()
    alice = register(c)
    r = c.post("/v1/sealed/certificate", headers=alice.headers(), json={"identity_key": b64(b"\x05" + bytes(32))})
    body = r.json()
    cert = base64.b64decode(body["certificate"])
    assert int.from_bytes(cert[62:70], "big") == body["expires_at"]
    assert relay_settings(".").sender_certificate_hours == 168


def test_blob_download_needs_no_credential(tmp_path):
    from support.relays import ThreadRelay

    with ThreadRelay(relay_settings(tmp_path, blob_part_size=1024)) as live:
        with httpx.Client(base_url=live.url, timeout=10) as c:
            alice = register(c)
            blob = c.post("/v1/blobs", headers=alice.headers(), json={"size": 10}).json()
            url = f"/v1/blobs/{blob['blob_id']}"
            h = {**alice.headers(), "Content-Type": "application/octet-stream"}
            assert c.put(f"{url}/parts/0", headers=h, content=b"0123456789").status_code == 200
            assert c.post(f"{url}/complete", headers=alice.headers(), json={}).status_code == 200
        with httpx.Client(base_url=live.url, timeout=10) as anyone:
            assert anyone.get(url).content == b"0123456789"
            assert anyone.get(url, headers={"Range": "bytes=4-"}).content == b"456789"
