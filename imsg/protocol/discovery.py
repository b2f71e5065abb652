"""Discovery, the client's half: the private lookup of who holds a handle (docs/PROTOCOL.md
§8a; §1 Words). Sans-I/O: the caller carries the messages to the relay.

    blind(handle)           -> (blind, element)         send element to /v1/discovery/evaluate
    finalize(handle, blind, evaluated) -> output        RFC 9497 Finalize
    tag = SHA-256(LABEL_TAG || output); prefix = first `bits` bits of tag
    open_record(output, entries) -> Holder | None       the entry whose tag is ours, opened

The relay sees the blinded element (random to it) and the prefix (shared by a bucket of
registered handles); the record is sealed under a key only the handle's OPRF output gives.

Also here, though it serves *reachable* (the account's own handles) rather than discovery:
the handle label, a handle sealed under a key from the account key, so that the account's
other devices (which hold the account key) can list its reachable handles from the relay
without the relay learning them. It lives beside the record it is stored with.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import imsg_oprf
from imsg.crypto.kdf import hkdf
from imsg.crypto.labels import LABEL_HANDLE_LABEL, LABEL_RECORD, LABEL_RECORD_KEY, LABEL_TAG
from imsg.protocol.errors import DecodeError

FLAG_VERIFIED = 0x01
BUCKET_BITS = 16
LABEL_PAD = 320  # label plaintexts are padded to this, so their length says nothing


@dataclass(frozen=True, slots=True)
class Holder:
    account_id: str
    verified: bool


@dataclass(frozen=True, slots=True)
class Blinded:
    handle: str
    blind: bytes
    element: bytes


def blind(handle: str, rng: Callable[[int], bytes]) -> Blinded:
    r, element = imsg_oprf.blind(handle.encode("utf-8"), rng)
    return Blinded(handle, r, element)


def finalize(b: Blinded, evaluated: bytes) -> bytes:
    """The handle's OPRF output; DecodeError when the relay's element is malformed."""
    try:
        return imsg_oprf.finalize(b.handle.encode("utf-8"), b.blind, evaluated)
    except imsg_oprf.OprfError as exc:
        raise DecodeError(f"relay sent a bad evaluation: {exc}") from None


def tag_of(output: bytes) -> bytes:
    return hashlib.sha256(LABEL_TAG + output).digest()


def prefix_of(tag: bytes, bits: int) -> int:
    return int.from_bytes(tag[:2], "big") >> (BUCKET_BITS - bits)


def open_record(output: bytes, entries: list[tuple[bytes, bytes]]) -> Holder | None:
    """The holder named by the entry with our tag, if any. A record that does not open
    under our key (a relay that forged it) counts as no entry."""
    tag = tag_of(output)
    key = hashlib.sha256(LABEL_RECORD_KEY + output).digest()
    for entry_tag, record in entries:
        if not hmac.compare_digest(entry_tag, tag) or len(record) < 12 + 16:
            continue
        try:
            plain = AESGCM(key).decrypt(record[:12], record[12:], LABEL_RECORD + tag)
        except InvalidTag:
            continue
        if len(plain) != 17:
            continue
        return Holder(plain[:16].hex(), bool(plain[16] & FLAG_VERIFIED))
    return None


def _label_key(account_private: bytes) -> bytes:
    return hkdf(account_private, salt=None, info=LABEL_HANDLE_LABEL, length=32)


def seal_label(account_private: bytes, handle: str, rng: Callable[[int], bytes], *, start: bool = False) -> bytes:
    """The handle (and whether new conversations start from it), sealed for the account's
    own devices: AES-256-GCM under HKDF(account key, LABEL_HANDLE_LABEL), padded."""
    body = json.dumps({"handle": handle, "start": start}).encode()
    if len(body) > LABEL_PAD:
        raise ValueError("handle too long to seal")
    nonce = rng(12)
    return nonce + AESGCM(_label_key(account_private)).encrypt(
        nonce, body + b" " * (LABEL_PAD - len(body)), LABEL_HANDLE_LABEL
    )


def open_label(account_private: bytes, label: bytes) -> tuple[str, bool]:
    """(handle, start) from a label this account sealed; DecodeError for any other."""
    try:
        plain = AESGCM(_label_key(account_private)).decrypt(label[:12], label[12:], LABEL_HANDLE_LABEL)
        doc = json.loads(plain.decode())
        handle, start = doc["handle"], doc.get("start", False)
    except (InvalidTag, ValueError, KeyError, TypeError, UnicodeDecodeError, AttributeError):
        raise DecodeError("a handle label that this account did not seal") from None
    if not isinstance(handle, str) or not isinstance(start, bool):
        raise DecodeError("malformed handle label")
    return handle, start
