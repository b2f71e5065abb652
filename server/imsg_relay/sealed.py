"""Sealed sender at the relay: sender certificates, its signing keys, unidentified access
(the routes are in routes/sealed.py).

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
import os
import secrets
import struct
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from imsg_relay.blinding import create_once

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


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def key_chain(keys: list[Ed25519PrivateKey]) -> list[dict[str, Any]]:
    """The chain as GET /v1/sealed/keys serves it: each key endorsed by the one before."""
    out = []
    for i, key in enumerate(keys):
        endorsement = None
        if i > 0:
            endorsement = _b64(keys[i - 1].sign(LABEL_RELAY_KEY + tagged_public(key)))
        out.append({"key_id": key_id(key).hex(), "public_key": _b64(tagged_public(key)), "endorsement": endorsement})
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


def new_access_key() -> bytes:
    """For tests and tools: a random access key."""
    return secrets.token_bytes(ACCESS_KEY_BYTES)
