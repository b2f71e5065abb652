"""Sealed sender at the relay: sender certificates, its signing keys, unidentified access.

The relay signs short-lived sender certificates for the device a request authenticates
(docs/PROTOCOL.md §6e), and accepts sealed envelopes - which name no sender - for an
account only with the account's unidentified-access key, or when the account allows sealed
messages from anyone. It keeps per account only SHA-256(LABEL_ACCESS_VERIFIER || key) and
the allow-anyone flag; a sealed send is counted per recipient (there is no credential), in
memory, and never logged with anything that could name the sender.

Signing keys live in `sealed-sender.keys` in the data directory (0600, one hex Ed25519
private key per line, oldest first; the last one signs). `imsg-relay rotate-sealed-key`
appends a key; each key endorses its successor, `Sig(previous, LABEL_RELAY_KEY, Enc(new))`,
so clients that pinned an older key follow a rotation without trusting the relay's word.
Workers read the file at start-up: restart them after a rotation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import struct
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.requests import Request
from starlette.responses import Response

from imsg_relay import schema
from imsg_relay.blinding import create_once
from imsg_relay.errors import RelayError, bad_request
from imsg_relay.storage.base import AccountNotFound, DeviceMismatch

# Word for word as in docs/PROTOCOL.md (the relay imports nothing from imsg_cli).
LABEL_SENDER_CERTIFICATE = b"imsg/v1/sig/sender-certificate"
LABEL_RELAY_KEY = b"imsg/v1/sig/relay-key"
LABEL_ACCESS_VERIFIER = b"imsg/v1/sealed/access-verifier"
WIRE_VERSION = 1
X25519_TAG, ED25519_TAG = 0x05, 0x06
ACCESS_KEY_BYTES = 16
ACCESS_HEADER = "unidentified-access-key"
KEYS_FILE = "sealed-sender.keys"


class SealedKeyFileError(Exception):
    """the sealed-sender key file is unusable"""


def _key_line(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes_raw().hex().encode() + b"\n"


def load_or_create_keys(path: Path) -> list[Ed25519PrivateKey]:
    """The relay's certificate signing keys, oldest first; made on first start (O_EXCL, so
    two workers starting together cannot make two different first keys)."""
    create_once(path, lambda: _key_line(Ed25519PrivateKey.generate()))
    if path.stat().st_mode & 0o077:
        raise SealedKeyFileError(f"sealed-sender key file {path} is readable by others; chmod 600 it")
    keys = []
    for line in path.read_text().split():
        try:
            keys.append(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(line)))
        except ValueError:
            raise SealedKeyFileError(f"sealed-sender key file {path} holds a malformed key") from None
    if not keys:
        raise SealedKeyFileError(f"sealed-sender key file {path} holds no key")
    return keys


def rotate_keys(path: Path) -> list[Ed25519PrivateKey]:
    """Append a new signing key (it signs from the next start) and return the chain."""
    load_or_create_keys(path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, _key_line(Ed25519PrivateKey.generate()))
        os.fsync(fd)
    finally:
        os.close(fd)
    return load_or_create_keys(path)


def tagged_public(key: Ed25519PrivateKey) -> bytes:
    return bytes((ED25519_TAG,)) + key.public_key().public_bytes_raw()


def key_id(key: Ed25519PrivateKey) -> bytes:
    return hashlib.sha256(tagged_public(key)).digest()[:8]


def key_chain(keys: list[Ed25519PrivateKey]) -> list[dict[str, Any]]:
    out = []
    for i, key in enumerate(keys):
        endorsement = None
        if i > 0:
            endorsement = schema.b64(keys[i - 1].sign(LABEL_RELAY_KEY + tagged_public(key)))
        out.append(
            {"key_id": key_id(key).hex(), "public_key": schema.b64(tagged_public(key)), "endorsement": endorsement}
        )
    return out


def sign_certificate(
    key: Ed25519PrivateKey, account_id: str, device_id: int, identity_key: bytes, expires_at: int
) -> bytes:
    body = (
        bytes((WIRE_VERSION,))
        + key_id(key)
        + bytes.fromhex(account_id)
        + struct.pack(">I", device_id)
        + identity_key
        + struct.pack(">Q", expires_at)
    )
    return body + key.sign(LABEL_SENDER_CERTIFICATE + body)


def access_verifier(access_key: bytes) -> bytes:
    return hashlib.sha256(LABEL_ACCESS_VERIFIER + access_key).digest()


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


schema.S["SealedKeys"] = {
    "type": "object",
    "required": ["keys"],
    "properties": {
        "keys": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key_id", "public_key", "endorsement"],
                "properties": {
                    "key_id": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
                    "public_key": {"type": "string", "format": "byte", "description": "0x06 || Ed25519 public key"},
                    "endorsement": {
                        "type": "string",
                        "format": "byte",
                        "nullable": True,
                        "description": "the previous key's signature of this one; null for the first",
                    },
                },
            },
        }
    },
}
schema.S["CertificateRequest"] = {
    "type": "object",
    "required": ["identity_key"],
    "properties": {
        "identity_key": {
            "type": "string",
            "format": "byte",
            "maxLength": 44,
            "description": "0x05 || this device's X25519 identity key",
        }
    },
}
schema.S["SenderCertificate"] = {
    "type": "object",
    "required": ["certificate", "expires_at"],
    "properties": {"certificate": {"type": "string", "format": "byte"}, "expires_at": schema.TIME_MS},
}
schema.S["SealedAccessRequest"] = {
    "type": "object",
    "required": ["allow_anyone"],
    "properties": {
        "access_key": {
            "type": "string",
            "format": "byte",
            "maxLength": 24,
            "description": "16 bytes; omit to keep the current one",
        },
        "allow_anyone": {"type": "boolean"},
    },
}
schema.S["SealedAccess"] = {
    "type": "object",
    "required": ["access_key_set", "allow_anyone"],
    "properties": {"access_key_set": {"type": "boolean"}, "allow_anyone": {"type": "boolean"}},
}


class SealedRoutes:
    """The sealed-sender handlers of `Relay` (mixed in; they use its helpers)."""

    _sealed_keys: list[Ed25519PrivateKey] | None = None

    def sealed_signing_keys(self) -> list[Ed25519PrivateKey]:
        if self._sealed_keys is None:
            settings = self.settings  # type: ignore[attr-defined]
            path = settings.sealed_keys_file or settings.data_dir / KEYS_FILE
            self._sealed_keys = load_or_create_keys(Path(path))
        return self._sealed_keys

    async def sealed_keys(self, request: Request) -> Response:
        return _json({"keys": key_chain(self.sealed_signing_keys())})

    async def sender_certificate(self, request: Request) -> Response:
        device = await self.authenticate(request)  # type: ignore[attr-defined]
        data = await self.body(request, "CertificateRequest")  # type: ignore[attr-defined]
        identity = data["identity_key"]
        if len(identity) != 33 or identity[0] != X25519_TAG:
            raise bad_request("identity_key must be 33 bytes: 0x05 then an x25519 public key")
        expires_at = self.now_ms() + self.settings.sender_certificate_hours * 3_600_000  # type: ignore[attr-defined]
        cert = sign_certificate(
            self.sealed_signing_keys()[-1], device.account_id, device.device_id, identity, expires_at
        )
        return _json({"certificate": schema.b64(cert), "expires_at": expires_at})

    async def get_sealed_access(self, request: Request) -> Response:
        device = await self.authenticate(request)  # type: ignore[attr-defined]
        verifier, anyone = await self.storage.get_sealed_access(device.account_id)  # type: ignore[attr-defined]
        return _json({"access_key_set": verifier is not None, "allow_anyone": anyone})

    async def put_sealed_access(self, request: Request) -> Response:
        device = await self.authenticate(request)  # type: ignore[attr-defined]
        data = await self.body(request, "SealedAccessRequest")  # type: ignore[attr-defined]
        key = data.get("access_key")
        if key is not None and len(key) != ACCESS_KEY_BYTES:
            raise bad_request(f"access_key must be {ACCESS_KEY_BYTES} bytes")
        verifier = access_verifier(key) if key is not None else None
        await self.storage.set_sealed_access(device.account_id, verifier, data["allow_anyone"])  # type: ignore[attr-defined]
        stored, anyone = await self.storage.get_sealed_access(device.account_id)  # type: ignore[attr-defined]
        return _json({"access_key_set": stored is not None, "allow_anyone": anyone})

    async def send_sealed(self, request: Request) -> Response:
        """Store sealed envelopes for every device of an account. No credential: counted
        per recipient, and allowed only with the account's access key (or allow-anyone)."""
        account_id = self.path_param(request, "account_id", schema.ACCOUNT_ID)  # type: ignore[attr-defined]
        self.sealed_limit.check(account_id)  # type: ignore[attr-defined]
        offered = _header_key(request)
        verifier, anyone = await self.storage.get_sealed_access(account_id)  # type: ignore[attr-defined]
        allowed = anyone
        if not allowed and offered and verifier is not None:
            allowed = hmac.compare_digest(access_verifier(offered), verifier)
        if not allowed:
            raise _access_denied()
        data = await self.body(request, "SendRequest")  # type: ignore[attr-defined]
        bodies = self.envelope_bodies(data)  # type: ignore[attr-defined]
        try:
            stored = await self.storage.store_envelopes(
                account_id,
                data["message_id"],
                bodies,  # type: ignore[attr-defined]
                None,
                self.now_ms(),
            )  # type: ignore[attr-defined]
        except AccountNotFound:
            raise _access_denied() from None
        except DeviceMismatch as exc:
            raise RelayError("device_mismatch", "device list changed", missing=exc.missing, extra=exc.extra) from None
        if bodies:
            await self.push.notify([(account_id, d) for d in bodies])  # type: ignore[attr-defined]
        return _json({"message_id": data["message_id"], "stored": stored})


def _json(body: Any, status: int = 200) -> Response:
    from imsg_relay.jsonio import dumps

    return Response(dumps(body), status_code=status, media_type="application/json")


def new_access_key() -> bytes:
    """For tests and tools: a random access key."""
    return secrets.token_bytes(ACCESS_KEY_BYTES)
