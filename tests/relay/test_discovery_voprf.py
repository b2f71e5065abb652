"""Discovery in verifiable mode at the relay (RFC 9497 mode 0x01): the VOPRF key signed by
the sealed-sender key, one batched proof per evaluation, bucket reads with no credential
(counted relay-wide), and the migration that drops handle rows tagged in mode 0x00."""

from __future__ import annotations

import base64
import hashlib
import os
import sqlite3

from starlette.testclient import TestClient

import imsg_oprf
from imsg.crypto import sign
from imsg.crypto.labels import LABEL_DISCOVERY_KEY
from imsg.protocol import discovery
from imsg_relay.app import create_app
from imsg_relay.sealed import KEYS_FILE, rotate_keys

from .helpers import b64, discovery_public_key, private_lookup, register
from support.relays import relay_settings


def _sealed_chain(c) -> dict[str, bytes]:
    return {k["key_id"]: base64.b64decode(k["public_key"])[1:] for k in c.get("/v1/sealed/keys").json()["keys"]}


def test_the_discovery_key_is_signed_by_the_current_sealed_key(tmp_path):
    settings = relay_settings(tmp_path / "data")
    with TestClient(create_app(settings)) as c:
        r = c.get("/v1/discovery/key")  # no credential
        assert r.status_code == 200
        doc = r.json()
        public = base64.b64decode(doc["public_key"])
        assert doc["key_id"] == hashlib.sha256(public).digest()[:8].hex()
        chain = _sealed_chain(c)
        assert doc["signed_by"] == list(chain)[-1]
        sign.verify(chain[doc["signed_by"]], LABEL_DISCOVERY_KEY, public, base64.b64decode(doc["signature"]))
        # A rotation of the sealed key re-signs the same discovery key with the new one.
        rotate_keys(settings.data_dir / KEYS_FILE)
        c.app.state.relay._sealed_keys = None  # what a restart does
        again = c.get("/v1/discovery/key").json()
        assert again["public_key"] == doc["public_key"] and again["signed_by"] != doc["signed_by"]
        assert again["signed_by"] == list(_sealed_chain(c))[-1]


def test_a_batch_is_evaluated_under_the_key_with_one_proof(tmp_path):
    with TestClient(create_app(relay_settings(tmp_path / "data"))) as c:
        alice = register(c)
        key = discovery_public_key(c)
        blinded = [discovery.blind(f"+1555000{i:04d}", os.urandom) for i in range(5)]
        r = c.post(
            "/v1/discovery/evaluate", json={"elements": [b64(b.element) for b in blinded]}, headers=alice.headers()
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["evaluated"]) == 5 and len(base64.b64decode(body["proof"])) == 64
        assert body["key_id"] == discovery.discovery_key_id(key)
        outputs = discovery.finalize_all(
            blinded, [base64.b64decode(e) for e in body["evaluated"]], key, base64.b64decode(body["proof"])
        )
        seed = (tmp_path / "data" / "discovery.key").read_bytes()
        sk, pk = imsg_oprf.derive_key_pair(seed, b"imsg/v1/relay-discovery-key", imsg_oprf.MODE_VOPRF)
        assert pk == key
        assert outputs == [imsg_oprf.evaluate(sk, b.handle.encode(), imsg_oprf.MODE_VOPRF) for b in blinded]


def test_registered_handles_are_found_through_verified_evaluations(tmp_path):
    with TestClient(create_app(relay_settings(tmp_path / "data"))) as c:
        alice, bob = register(c), register(c)
        r = c.post(
            "/v1/handles", json={"handle": "+15551239999", "label": b64(os.urandom(60))}, headers=alice.headers()
        )
        assert r.status_code == 200, r.text
        assert private_lookup(c, bob, "+15551239999") == alice.account_id
        assert private_lookup(c, bob, "+15551239998") is None


def test_bucket_reads_need_no_credential_and_are_limited_relay_wide(tmp_path):
    settings = relay_settings(tmp_path / "data", bucket_read_rate=0.001, bucket_read_burst=3)
    with TestClient(create_app(settings)) as c:
        for _ in range(3):
            assert c.post("/v1/discovery/buckets", json={"prefix_bits": 0, "prefixes": [0]}).status_code == 200
        alice = register(c)  # another reader, credentialed or not, shares the one budget
        r = c.post("/v1/discovery/buckets", json={"prefix_bits": 0, "prefixes": [0]}, headers=alice.headers())
        assert r.status_code == 429 and r.json()["error"] == "rate_limited"
        assert "Retry-After" in r.headers


def test_the_openapi_table_says_who_authenticates(tmp_path):
    with TestClient(create_app(relay_settings(tmp_path / "data"))) as c:
        paths = c.get("/openapi.json").json()["paths"]
    assert paths["/v1/discovery/key"]["get"]["security"] == []
    assert paths["/v1/discovery/buckets"]["post"]["security"] == []
    assert paths["/v1/discovery/evaluate"]["post"]["security"] == [{"bearer": []}]


def test_migration_drops_handles_tagged_in_mode_0(tmp_path):
    """A schema-6 database (mode-0x00 tags): its handle rows go, everything else stays."""
    settings = relay_settings(tmp_path / "data")
    with TestClient(create_app(settings)) as c:
        alice = register(c)
        c.post("/v1/handles", json={"handle": "+15551230000", "label": b64(os.urandom(60))}, headers=alice.headers())
    db = settings.data_dir / "relay.db"
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM handles").fetchone()[0] >= 1
        conn.execute("PRAGMA user_version = 6")  # the last schema with mode-0 tags
    with TestClient(create_app(settings)) as c:
        assert c.get("/v1/handles", headers=alice.headers()).json() == {"handles": []}
        assert c.get(f"/v1/accounts/{alice.account_id}", headers=alice.headers()).status_code == 200
        c.post("/v1/handles", json={"handle": "+15551230000", "label": b64(os.urandom(60))}, headers=alice.headers())
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 7
    with TestClient(create_app(settings)) as c:  # a restart on schema 7 keeps them
        assert len(c.get("/v1/handles", headers=alice.headers()).json()["handles"]) == 1
