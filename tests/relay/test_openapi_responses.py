"""The answers the relay gives match the types /openapi.json publishes for them.

The document is generated from the msgspec types the operations table names; this holds
the routes to those types: each JSON answer of a flow through (nearly) every route is
decoded with its operation's response type (required fields, types, constraints) and may
carry no field the type does not declare. Errors are held to `Error`.
"""

from __future__ import annotations

import base64
import os

import msgspec
import pytest

from imsg_relay.routes import OPERATIONS
from imsg_relay.schema import Error

from .helpers import b64, new_message_id, open_channel, register, send

BY_ID = {op.operation_id: op for op in OPERATIONS}


def conforms(operation_id: str, r) -> dict:
    op = BY_ID[operation_id]
    assert r.status_code == op.ok, (operation_id, r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    msgspec.json.decode(r.content, type=op.response)  # raises on a missing or mistyped field
    doc = r.json()
    assert set(doc) <= set(op.response.__struct_fields__), (operation_id, set(doc) - set(op.response.__struct_fields__))
    return doc


def refused(r, status: int) -> dict:
    assert r.status_code == status, r.text
    msgspec.json.decode(r.content, type=Error)
    doc = r.json()
    assert set(doc) <= set(Error.__struct_fields__)
    return doc


def test_every_answer_of_a_flow_matches_its_published_type(client):
    conforms("health", client.get("/v1/health"))
    alice, bob = register(client, "alice@example.com"), register(client, devices=2)
    conforms("get_account", client.get(f"/v1/accounts/{bob.account_id}", headers=alice.headers()))

    keys = {
        "signed_prekey": {"key_id": 1, "public_key": b64(b"s" * 33), "signature": b64(b"g" * 64)},
        "kem_last_resort": {"key_id": 2, "public_key": b64(b"k" * 1184), "signature": b64(b"g" * 64)},
        "one_time": [{"key_id": 3, "public_key": b64(b"o" * 33)}],
        "kem_one_time": [{"key_id": 4, "public_key": b64(b"k" * 1184), "signature": b64(b"g" * 64)}],
    }
    conforms("put_keys", client.put("/v1/keys", json=keys, headers=bob.headers()))
    conforms("key_counts", client.get("/v1/keys/count", headers=bob.headers()))
    for _ in range(2):  # with one-time keys, then the last resort and none
        conforms("get_bundles", client.get(f"/v1/keys/{bob.account_id}", headers=alice.headers()))

    mid = new_message_id()
    conforms("send", send(client, alice, bob, b"hi", mid))
    conforms("fetch", client.get("/v1/messages", headers=bob.headers()))
    conforms("ack", client.post("/v1/messages/ack", json={"message_ids": [mid]}, headers=bob.headers()))
    conforms("fetch", client.get("/v1/messages", headers=bob.headers()))  # empty

    channel = open_channel(client, alice)
    box = f"/v1/provisioning/{channel}/new"
    conforms("put_provisioning", client.put(box, json={"body": b64(b"p")}))
    conforms("take_provisioning", client.get(box))
    conforms("take_provisioning", client.get(box))  # null body
    conforms("close_channel", client.delete(f"/v1/provisioning/{channel}", headers=alice.headers()))
    conforms("open_channel", client.post("/v1/provisioning", json={}, headers=alice.headers()))

    data = os.urandom(5000)
    blob = conforms("create_blob", client.post("/v1/blobs", json={"size": len(data)}, headers=alice.headers()))
    part = {**alice.headers(), "Content-Type": "application/octet-stream"}
    conforms("put_blob_part", client.put(f"/v1/blobs/{blob['blob_id']}/parts/0", content=data, headers=part))
    conforms("blob_status", client.get(f"/v1/blobs/{blob['blob_id']}/status", headers=alice.headers()))
    conforms("complete_blob", client.post(f"/v1/blobs/{blob['blob_id']}/complete", headers=alice.headers()))
    conforms("delete_blob", client.delete(f"/v1/blobs/{blob['blob_id']}", headers=alice.headers()))

    handle = conforms(
        "add_handle",
        client.post("/v1/handles", json={"handle": "+15550001111", "label": b64(b"l")}, headers=alice.headers()),
    )
    conforms("list_handles", client.get("/v1/handles", headers=alice.headers()))
    conforms(
        "update_handle", client.patch(f"/v1/handles/{handle['id']}", json={"receiving": False}, headers=alice.headers())
    )
    conforms("remove_handle", client.delete(f"/v1/handles/{handle['id']}", headers=alice.headers()))

    from imsg.protocol import discovery

    blinded = discovery.blind("alice@example.com", os.urandom)
    ev = conforms(
        "evaluate",
        client.post("/v1/discovery/evaluate", json={"elements": [b64(blinded.element)]}, headers=bob.headers()),
    )
    conforms(
        "buckets",
        client.post(
            "/v1/discovery/buckets", json={"prefix_bits": ev["prefix_bits"], "prefixes": [0]}, headers=bob.headers()
        ),
    )

    conforms("sealed_keys", client.get("/v1/sealed/keys"))
    identity = b"\x05" + bytes(32)
    conforms(
        "sender_certificate",
        client.post("/v1/sealed/certificate", json={"identity_key": b64(identity)}, headers=alice.headers()),
    )
    key = bytes(range(16))
    conforms(
        "put_sealed_access",
        client.put("/v1/sealed/access", json={"access_key": b64(key), "allow_anyone": False}, headers=bob.headers()),
    )
    conforms("get_sealed_access", client.get("/v1/sealed/access", headers=bob.headers()))
    sealed = {"message_id": new_message_id(), "messages": [{"device_id": d, "body": b64(b"s")} for d in (1, 2)]}
    conforms(
        "send_sealed",
        client.put(
            f"/v1/sealed/messages/{bob.account_id}",
            json=sealed,
            headers={"Unidentified-Access-Key": base64.b64encode(key).decode()},
        ),
    )

    conforms("privacy_report", client.get("/v1/privacy/report", headers=bob.headers()))
    conforms("remove_device", client.request("DELETE", "/v1/devices/2", headers=bob.headers()))


@pytest.mark.parametrize(
    "method, path, kwargs, status",
    [
        ("GET", "/v1/nowhere", {}, 404),
        ("DELETE", "/v1/health", {}, 405),
        ("GET", "/v1/messages", {"headers": {"Authorization": "Bearer nope"}}, 401),
        ("POST", "/v1/accounts", {"content": b"{", "headers": {"Content-Type": "application/json"}}, 400),
    ],
)
def test_errors_match_the_published_error_type(client, method, path, kwargs, status):
    refused(client.request(method, path, **kwargs), status)


def test_a_device_mismatch_carries_its_fields(client):
    alice, bob = register(client), register(client, devices=2)
    doc = refused(send(client, alice, bob, devices=[1, 3]), 409)
    assert (doc["missing"], doc["extra"]) == ([2], [3])
