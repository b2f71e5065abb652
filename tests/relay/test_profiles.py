"""PUT /v1/profile/{key_id} and GET /v1/profile/{account_id}/{key_id} (docs/RELAY-API.md,
"Profiles"): the frame checks, replacement and revisions, reads without a credential and
only under the right key id, limits, and what the database keeps."""

from __future__ import annotations

import os
import struct

import pytest
from starlette.testclient import TestClient

from imsg_relay.app import create_app
from imsg_relay.routes.profiles import PROFILE_MAX, PROFILE_MIN

from .helpers import register
from support.relays import relay_settings

OCTETS = {"Content-Type": "application/octet-stream"}


def frame(key_id: bytes, revision: int, size: int = PROFILE_MIN, fill: bytes = b"\xab") -> bytes:
    """A blob with a well-formed frame (the relay cannot check more than the frame)."""
    head = b"\x01" + key_id + struct.pack(">Q", revision)
    return head + fill * (size - len(head))


def put(client, ident, key_id: bytes, body: bytes, headers=OCTETS):
    return client.put(f"/v1/profile/{key_id.hex()}", content=body, headers={**ident.headers(), **headers})


def get(client, account_id: str, key_id: bytes, headers=None):
    return client.get(f"/v1/profile/{account_id}/{key_id.hex()}", headers=headers or {})


def test_store_replace_and_read_without_credentials(client):
    alice, bob = register(client), register(client)
    k1, k2 = os.urandom(32), os.urandom(32)
    r = put(client, alice, k1, frame(k1, 1))
    assert r.status_code == 200 and r.json() == {"revision": 1, "size": PROFILE_MIN}
    r = get(client, alice.account_id, k1)  # no Authorization header at all
    assert r.status_code == 200 and r.content == frame(k1, 1)
    assert r.headers["content-type"] == "application/octet-stream"
    # Another key id (a guess, or the key before a rotation) finds nothing; nor does
    # another account's id with this key id.
    assert get(client, alice.account_id, k2).status_code == 404
    assert get(client, bob.account_id, k1).status_code == 404
    # A new key (rotation) replaces the copy: the old key id finds nothing any more.
    assert put(client, alice, k2, frame(k2, 2, PROFILE_MIN + 4096)).status_code == 200
    assert get(client, alice.account_id, k1).status_code == 404
    assert get(client, alice.account_id, k2).content == frame(k2, 2, PROFILE_MIN + 4096)
    # Same revision again (a retried upload) is accepted; an older one is refused.
    assert put(client, alice, k2, frame(k2, 2, fill=b"\xcd")).status_code == 200
    r = put(client, alice, k2, frame(k2, 1))
    assert r.status_code == 409 and r.json()["error"] == "stale_revision"
    assert get(client, alice.account_id, k2).content == frame(k2, 2, fill=b"\xcd")
    # Bob's upload touches only Bob's profile.
    assert put(client, bob, k1, frame(k1, 7)).status_code == 200
    assert get(client, alice.account_id, k2).content == frame(k2, 2, fill=b"\xcd")


@pytest.mark.parametrize("case", ["short", "version", "key_id", "revision"])
def test_malformed_frames_are_refused(client, case):
    alice = register(client)
    k = os.urandom(32)
    body = {
        "short": frame(k, 1)[:-1],
        "version": b"\x02" + frame(k, 1)[1:],
        "key_id": frame(os.urandom(32), 1),
        "revision": frame(k, 1 << 63),
    }[case]
    r = put(client, alice, k, body)
    assert r.status_code == 400 and r.json()["error"] == "bad_request"
    assert get(client, alice.account_id, k).status_code == 404


def test_limits_media_type_and_authentication(client):
    alice = register(client)
    k = os.urandom(32)
    r = put(client, alice, k, frame(k, 1, PROFILE_MAX + 1))
    assert r.status_code == 413 and r.json()["limit"] == PROFILE_MAX
    assert put(client, alice, k, frame(k, 1, PROFILE_MAX)).status_code == 200
    r = put(client, alice, k, frame(k, 2), headers={"Content-Type": "application/json"})
    assert r.status_code == 415
    r = client.put(f"/v1/profile/{k.hex()}", content=frame(k, 3), headers=OCTETS)
    assert r.status_code == 401
    assert (
        client.put(
            f"/v1/profile/{k.hex()[:-1]}", content=frame(k, 3), headers={**alice.headers(), **OCTETS}
        ).status_code
        == 400
    )
    assert client.get(f"/v1/profile/{alice.account_id}/{'G' * 64}").status_code == 400


def test_reads_are_rate_limited_per_account_without_addresses(tmp_path):
    settings = relay_settings(tmp_path, provisioning_rate=3.0, provisioning_burst=3.0)
    with TestClient(create_app(settings)) as client:
        alice, bob = register(client), register(client)
        k = os.urandom(32)
        put(client, alice, k, frame(k, 1))
        codes = [get(client, alice.account_id, k).status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200] and codes[3] == 429
        assert get(client, bob.account_id, k).status_code == 404  # another account's bucket


def test_the_database_row_is_the_opaque_blob(client, settings):
    import sqlite3

    alice = register(client)
    k = os.urandom(32)
    put(client, alice, k, frame(k, 4))
    db = sqlite3.connect(settings.data_dir / "relay.db")
    try:
        rows = db.execute("SELECT account_id, key_id, revision, body FROM profiles").fetchall()
    finally:
        db.close()
    assert rows == [(alice.account_id, k, 4, frame(k, 4))]
