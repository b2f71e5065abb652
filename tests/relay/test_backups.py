"""Backups at the relay (`/v1/backup`, `/v1/restore/...`) on SQLite and PostgreSQL: upload,
replace, status, fetch with the access token, enrolment signed by the account key, delete,
and what is left in the table and the blob store after each step."""

from __future__ import annotations

import base64
import hashlib
import os

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from imsg_relay.routes.backups import LABEL_RESTORE_DEVICE, restore_statement

from .helpers import Identity, account_id_of, new_token, registration
from .test_privacy_report import backend  # noqa: F401 (the sqlite/postgres fixture)
from support.relays import ThreadRelay, relay_settings

OCTET = {"Content-Type": "application/octet-stream"}


def _account(c: httpx.Client) -> tuple[Identity, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.generate()
    public = b"\x06" + key.public_key().public_bytes_raw()
    ident = Identity(account_id_of(public), public, f"u{os.urandom(4).hex()}@example.com", {1: new_token()})
    assert c.post("/v1/accounts", json=registration(ident)).status_code == 201
    return ident, key


def _files(relay) -> set[str]:
    root = relay.app.state.relay.settings.data_dir / "blobs"
    return {p.name for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def _bearer(raw: bytes) -> dict[str, str]:
    return {"Authorization": "Bearer " + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()}


def test_backup_lifecycle_and_restore_enrolment(backend):  # noqa: F811
    relay, clock, run, _ = backend
    access = os.urandom(32)
    access_hash = hashlib.sha256(access).hexdigest()
    with httpx.Client(base_url=relay.url, timeout=10) as c:
        me, key = _account(c)
        h = {**me.headers(), **OCTET}
        assert c.get("/v1/backup", headers=me.headers()).status_code == 404
        assert c.put("/v1/backup", headers=OCTET, params={"access_hash": access_hash}, content=b"x").status_code == 401
        assert c.put("/v1/backup", headers=h, content=b"x").status_code == 400  # no access hash
        assert c.put("/v1/backup", headers=h, params={"access_hash": "ab"}, content=b"x").status_code == 400
        r = c.put(
            "/v1/backup",
            headers={**me.headers(), "Content-Type": "application/json"},
            params={"access_hash": access_hash},
            content=b"{}",
        )
        assert r.status_code == 415
        assert _files(relay) == set()  # refusals leave no file

        first = os.urandom(1000)
        r = c.put("/v1/backup", headers=h, params={"access_hash": access_hash}, content=first)
        assert r.status_code == 200 and r.json()["size"] == 1000
        ((blob1, size, created),) = run(
            "SELECT blob_id, size, created_at FROM backups WHERE account_id = ?", me.account_id
        )
        assert _files(relay) == {blob1} and size == 1000
        assert run("SELECT access_hash FROM backups")[0][0] == bytes.fromhex(access_hash)
        clock.t += 60
        second = os.urandom(3000)
        r = c.put("/v1/backup", headers=h, params={"access_hash": access_hash}, content=second)
        assert r.json() == {"size": 3000, "created_at": created, "updated_at": int(clock.t * 1000)}
        ((blob2,),) = run("SELECT blob_id FROM backups")
        assert blob2 != blob1 and _files(relay) == {blob2}  # the old bytes are gone
        assert c.get("/v1/backup", headers=me.headers()).json()["size"] == 3000

        # Another account cannot take over the same access hash.
        other, _ = _account(c)
        r = c.put("/v1/backup", headers={**other.headers(), **OCTET}, params={"access_hash": access_hash}, content=b"y")
        assert r.status_code == 409 and r.json()["error"] == "backup_access_taken"
        assert _files(relay) == {blob2}

        # Restoring: the access token opens the account and the bytes; nothing else does.
        assert c.get("/v1/restore/account").status_code == 401
        assert c.get("/v1/restore/account", headers=_bearer(os.urandom(32))).status_code == 404
        assert c.get("/v1/restore/backup", headers=_bearer(hashlib.sha256(access).digest())).status_code == 404
        r = c.get("/v1/restore/account", headers=_bearer(access))
        assert r.json()["account_id"] == me.account_id and r.json()["devices"] == [1]
        assert c.get("/v1/restore/backup", headers=_bearer(access)).content == second

        token = os.urandom(32)
        token_b64 = base64.urlsafe_b64encode(token).rstrip(b"=").decode()
        device_list = b"new-signed-list"
        at = int(clock.t * 1000)
        statement = restore_statement(me.account_id, 5, token, device_list, at)
        body = {
            "token": token_b64,
            "device_list": base64.b64encode(device_list).decode(),
            "signed_at": at,
            "signature": base64.b64encode(key.sign(LABEL_RESTORE_DEVICE + statement)).decode(),
        }
        # The signature must be the account key's, over this very request, and fresh.
        for bad in (
            {
                **body,
                "signature": base64.b64encode(
                    Ed25519PrivateKey.generate().sign(LABEL_RESTORE_DEVICE + statement)
                ).decode(),
            },
            {**body, "signature": base64.b64encode(key.sign(statement)).decode()},  # no label
            {**body, "device_list": base64.b64encode(b"another list").decode()},
        ):
            r = c.put("/v1/restore/devices/5", headers=_bearer(access), json=bad)
            assert r.status_code == 401, r.text
        assert c.put("/v1/restore/devices/6", headers=_bearer(access), json=body).status_code == 401
        assert c.put("/v1/restore/devices/5", headers=_bearer(os.urandom(32)), json=body).status_code == 404
        clock.t += 301
        assert c.put("/v1/restore/devices/5", headers=_bearer(access), json=body).status_code == 401  # stale
        clock.t -= 301
        r = c.put("/v1/restore/devices/5", headers=_bearer(access), json=body)
        assert r.status_code == 201 and r.json() == {"account_id": me.account_id, "device_id": 5}
        assert run("SELECT device_id FROM devices WHERE account_id = ? ORDER BY device_id", me.account_id) == [
            (1,),
            (5,),
        ]
        assert run("SELECT device_list FROM accounts WHERE account_id = ?", me.account_id) == [(device_list,)]
        # The enrolled device authenticates with its token like any other.
        assert c.get("/v1/keys/count", headers={"Authorization": f"Bearer {token_b64}"}).status_code == 200
        assert c.put("/v1/restore/devices/5", headers=_bearer(access), json=body).status_code == 409

        # Off: the row and the bytes go at once; the access token opens nothing after.
        assert c.delete("/v1/backup", headers={"Authorization": f"Bearer {token_b64}"}).json() == {"deleted": True}
        assert run("SELECT count(*) FROM backups WHERE account_id = ?", me.account_id) == [(0,)]
        assert _files(relay) == set()
        assert c.get("/v1/restore/backup", headers=_bearer(access)).status_code == 404
        assert c.delete("/v1/backup", headers=me.headers()).json() == {"deleted": False}


def test_backup_over_the_cap_is_refused_before_it_is_read(tmp_path):
    with (
        ThreadRelay(relay_settings(tmp_path, max_backup=4096)) as relay,
        httpx.Client(base_url=relay.url, timeout=10) as c,
    ):
        me, _ = _account(c)
        r = c.put(
            "/v1/backup", headers={**me.headers(), **OCTET}, params={"access_hash": "ab" * 32}, content=os.urandom(4097)
        )
        assert r.status_code == 413 and r.json()["limit"] == 4096
        assert c.get("/v1/backup", headers=me.headers()).status_code == 404
        assert _files(relay) == set()


def test_restore_routes_are_rate_limited_relay_wide(tmp_path):
    with (
        ThreadRelay(relay_settings(tmp_path, register_rate=2.0, register_burst=2.0)) as relay,
        httpx.Client(base_url=relay.url, timeout=10) as c,
    ):
        codes = [c.get("/v1/restore/account", headers=_bearer(os.urandom(32))).status_code for _ in range(4)]
        assert codes[:1] == [404] and codes[-1] == 429
