"""Sealed sender routes: the relay's certificate keys, sender certificates, a recipient's
access settings, and sealed sends (imsg_relay/sealed.py holds the keys and certificates).

A sealed send carries no credential: it is counted per recipient account, in memory, and
accepted only with the recipient's unidentified-access key (or when it allows anyone).
Nothing here logs anything that could name the sender.
"""

from __future__ import annotations

import base64
import hmac
from typing import Annotated

from msgspec import UNSET, Meta, Struct, UnsetType
from starlette.requests import Request
from starlette.responses import Response

from imsg_relay import schema
from imsg_relay.context import RelayContext
from imsg_relay.errors import RelayError, bad_request
from imsg_relay.operation import Call, json_response
from imsg_relay.routes.messages import envelope_bodies, store
from imsg_relay.schema import SendRequest
from imsg_relay.sealed import (
    ACCESS_HEADER,
    ACCESS_KEY_BYTES,
    X25519_TAG,
    access_verifier,
    key_chain,
    sign_certificate,
)
from imsg_relay.storage.base import AccountNotFound


def _access_denied() -> RelayError:
    # One answer whatever was wrong (no key, a wrong key, an unknown account with no
    # access row), so the check is not an oracle for who exists or which keys are close.
    return RelayError(
        "access_denied", "sealed sending to this account needs its unidentified access key; send authenticated instead"
    )


def _header_key(request: Request) -> bytes | None:
    raw = request.headers.get(ACCESS_HEADER)
    if raw is None:
        return None
    try:
        key = base64.b64decode(raw, validate=True)
    except ValueError:
        return b""
    return key if len(key) == ACCESS_KEY_BYTES else b""


class SealedKey(Struct):
    key_id: Annotated[str, schema.pattern("^[0-9a-f]{16}$")]
    public_key: Annotated[bytes, Meta(description="0x06 || Ed25519 public key")]
    endorsement: Annotated[
        bytes | None, Meta(description="the previous key's signature of this one; null for the first")
    ]


class SealedKeys(Struct):
    keys: list[SealedKey]


class CertificateRequest(Struct):
    identity_key: Annotated[bytes, Meta(max_length=33, description="0x05 || this device's X25519 identity key")]


class SenderCertificate(Struct):
    certificate: bytes
    expires_at: schema.TimeMs


class SealedAccessRequest(Struct):
    allow_anyone: bool
    access_key: (
        Annotated[bytes, Meta(max_length=18, description="16 bytes; omit to keep the current one")] | UnsetType
    ) = UNSET


class SealedAccess(Struct):
    access_key_set: bool
    allow_anyone: bool


async def sealed_keys(relay: RelayContext, call: Call) -> Response:
    return json_response({"keys": key_chain(relay.sealed_signing_keys())})


async def sender_certificate(relay: RelayContext, call: Call) -> Response:
    device = await relay.authenticate(call.request)
    data = await call.body(CertificateRequest)
    identity = data.identity_key
    if len(identity) != 33 or identity[0] != X25519_TAG:
        raise bad_request("identity_key must be 33 bytes: 0x05 then an x25519 public key")
    expires_at = relay.now_ms() + relay.settings.sender_certificate_hours * 3_600_000
    key = relay.sealed_signing_keys()[-1]
    cert = sign_certificate(key, device.account_id, device.device_id, identity, expires_at)
    return json_response({"certificate": (cert), "expires_at": expires_at})


async def get_sealed_access(relay: RelayContext, call: Call) -> Response:
    device = await relay.authenticate(call.request)
    verifier, anyone = await relay.storage.get_sealed_access(device.account_id)
    return json_response({"access_key_set": verifier is not None, "allow_anyone": anyone})


async def put_sealed_access(relay: RelayContext, call: Call) -> Response:
    device = await relay.authenticate(call.request)
    data = await call.body(SealedAccessRequest)
    key = None if isinstance(data.access_key, UnsetType) else data.access_key
    if key is not None and len(key) != ACCESS_KEY_BYTES:
        raise bad_request(f"access_key must be {ACCESS_KEY_BYTES} bytes")
    verifier = access_verifier(key) if key is not None else None
    await relay.storage.set_sealed_access(device.account_id, verifier, data.allow_anyone)
    stored, anyone = await relay.storage.get_sealed_access(device.account_id)
    return json_response({"access_key_set": stored is not None, "allow_anyone": anyone})


async def access_allowed(relay: RelayContext, request: Request, account_id: str) -> bool:
    """Whether the request's Unidentified-Access-Key opens this account (or it allows
    anyone). The same check for sealed sends and anonymous bundle fetches."""
    offered = _header_key(request)
    verifier, anyone = await relay.storage.get_sealed_access(account_id)
    if anyone:
        return True
    if not offered or verifier is None:
        return False
    return hmac.compare_digest(access_verifier(offered), verifier)


def access_denied() -> RelayError:
    return _access_denied()


async def send_sealed(relay: RelayContext, call: Call) -> Response:
    """Store sealed envelopes for every device of an account. No credential: allowed only
    with the account's access key (or allow-anyone). The check runs first: a refused
    attempt is counted in a bucket of its own (429 once a flood exhausts it), and only
    allowed sends are charged to the recipient's budget, so nobody without the key can
    use up what its valid senders may send (issue 12, row 8)."""
    account_id = call.path("account_id")
    if not await access_allowed(relay, call.request, account_id):
        relay.limits.sealed_refused.check(account_id)
        raise _access_denied()
    relay.limits.sealed.check(account_id)
    data = await call.body(SendRequest)
    bodies = envelope_bodies(relay, data)
    try:
        stored = await store(relay, account_id, data.message_id, bodies, None)
    except AccountNotFound:
        raise _access_denied() from None
    return json_response({"message_id": data.message_id, "stored": stored})
