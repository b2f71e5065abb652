"""Helpers shared by the relay tests: make accounts, tokens and message ids. The relay
launchers themselves are in tests/support/relays.py."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import socket
from dataclasses import dataclass
from typing import Any


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def new_token() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


def new_message_id() -> str:
    return secrets.token_hex(16)


def account_id_of(account_key: bytes) -> str:
    return hashlib.sha256(b"imsg/v1/account-id" + account_key).digest()[:16].hex()


@dataclass
class Identity:
    account_id: str
    account_key: bytes
    handle: str
    tokens: dict[int, str]

    def headers(self, device_id: int = 1) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[device_id]}"}


def new_identity(handle: str | None = None) -> Identity:
    key = b"\x06" + os.urandom(32)
    handle = handle or f"user-{secrets.token_hex(6)}@example.com"
    return Identity(account_id_of(key), key, handle, {1: new_token()})


def registration(ident: Identity) -> dict[str, Any]:
    return {
        "account_id": ident.account_id,
        "account_key": b64(ident.account_key),
        "handle": ident.handle,
        "device_list": b64(b"signed-device-list-v1"),
        "device_id": 1,
        "token": ident.tokens[1],
    }


def register(client: Any, handle: str | None = None, devices: int = 1) -> Identity:
    """Register an account over HTTP (any httpx-like sync client) with `devices` devices."""
    ident = new_identity(handle)
    r = client.post("/v1/accounts", json=registration(ident))
    assert r.status_code == 201, r.text
    for d in range(2, devices + 1):
        ident.tokens[d] = new_token()
        r = client.put(
            f"/v1/devices/{d}",
            headers=ident.headers(1),
            json={"token": ident.tokens[d], "device_list": b64(b"list-%d" % d)},
        )
        assert r.status_code == 201, r.text
    return ident


def private_lookup(client: Any, ident: Identity, handle: str) -> str | None:
    """The account holding `handle`, found the way a client finds it: one VOPRF evaluation
    of a blinded element (its proof checked under the relay's signed discovery key), then
    one bucket by tag prefix, read with no credential. None when nobody holds it."""
    from imsg.protocol import discovery

    key = discovery_public_key(client)
    b = discovery.blind(handle, os.urandom)
    r = client.post("/v1/discovery/evaluate", json={"elements": [b64(b.element)]}, headers=ident.headers())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["key_id"] == discovery.discovery_key_id(key)
    [output] = discovery.finalize_all(
        [b], [base64.b64decode(body["evaluated"][0])], key, base64.b64decode(body["proof"])
    )
    bits = body["prefix_bits"]
    prefix = discovery.prefix_of(discovery.tag_of(output), bits)
    r = client.post("/v1/discovery/buckets", json={"prefix_bits": bits, "prefixes": [prefix]})
    assert r.status_code == 200, r.text
    entries = [(base64.b64decode(e["tag"]), base64.b64decode(e["record"])) for e in r.json()["buckets"][0]["entries"]]
    holder = discovery.open_record(output, entries)
    return holder.account_id if holder else None


def discovery_public_key(client: Any) -> bytes:
    """The relay's VOPRF public key, checked against its sealed-sender key chain (trusting
    the whole chain it serves, as a first pin does)."""
    from imsg.protocol import discovery

    r = client.get("/v1/discovery/key")
    assert r.status_code == 200, r.text
    doc = r.json()
    chain = client.get("/v1/sealed/keys").json()["keys"]
    trusted = {k["key_id"]: base64.b64decode(k["public_key"])[1:] for k in chain}
    return discovery.verify_discovery_key(
        base64.b64decode(doc["public_key"]), doc["signed_by"], base64.b64decode(doc["signature"]), trusted
    ).public_key


def open_channel(client: Any, ident: Identity, device_id: int = 1) -> str:
    """Open a provisioning channel as a device of `ident`; returns the channel id."""
    r = client.post("/v1/provisioning", headers=ident.headers(device_id), json={})
    assert r.status_code == 201, r.text
    return r.json()["channel"]


def send(
    client: Any,
    sender: Identity,
    to: Identity,
    body: bytes = b"hello",
    message_id: str | None = None,
    sender_device: int = 1,
    devices: list[int] | None = None,
) -> Any:
    if devices is None:
        devices = sorted(to.tokens)
        if to.account_id == sender.account_id:
            devices = [d for d in devices if d != sender_device]
    payload = {
        "message_id": message_id or new_message_id(),
        "messages": [{"device_id": d, "body": b64(body)} for d in devices],
    }
    return client.put(f"/v1/messages/{to.account_id}", json=payload, headers=sender.headers(sender_device))


def flood_until_answered(port: int, head: bytes, *, give_up_after: int = 64 * 1024 * 1024) -> tuple[bytes, int]:
    """Open a raw connection, send `head` (request line and headers of a chunked request),
    then stream 64 KiB chunks until the relay answers (or `give_up_after` bytes). Returns the
    answer's head and how many body bytes were sent: a relay that checks its cap while
    streaming answers 413 long before the end."""

    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head)
    chunk = b"x" * 65536
    sent = 0
    answer = b""
    sock.settimeout(0.05)
    try:
        while sent < give_up_after:
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            try:
                answer += sock.recv(65536)
            except TimeoutError:
                continue
            if answer:
                break
        sock.settimeout(5)
        while b"\r\n\r\n" not in answer:
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    finally:
        sock.close()
    return answer, sent
