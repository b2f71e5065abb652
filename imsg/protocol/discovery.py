"""Discovery, the client's half: the private lookup of who holds a handle (docs/PROTOCOL.md
§8a; §1 Words). Sans-I/O: the caller carries the messages to the relay.

    verify_discovery_key(doc, trusted sealed keys) -> public key   GET /v1/discovery/key
    blind(handle)           -> (blind, element)         send elements to /v1/discovery/evaluate
    finalize_all(blinded, evaluated, pk, proof) -> outputs   RFC 9497 VOPRF Finalize (proof first)
    tag = SHA-256(LABEL_TAG || output); prefix = first `bits` bits of tag
    check_prefix_bits(bits) / check_bucket(entries)      the client's own k-anonymity floor
    open_record(output, entries) -> Holder | None       the entry whose tag is ours, opened

The relay sees the blinded element (random to it) and the prefix (shared by a bucket of
registered handles); the record is sealed under a key only the handle's OPRF output gives.
Mode 0x01 (VOPRF) with a pinned public key: every evaluation proves it was made under that
key, so the relay cannot evaluate each lookup under a key of its own and link them.

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
from imsg.crypto import sign
from imsg.crypto.errors import BadSignatureError
from imsg.crypto.kdf import hkdf
from imsg.crypto.labels import (
    LABEL_DISCOVERY_KEY,
    LABEL_HANDLE_LABEL,
    LABEL_RECORD,
    LABEL_RECORD_KEY,
    LABEL_TAG,
)
from imsg.protocol.errors import DecodeError
from imsg_oprf import voprf

MODE = imsg_oprf.MODE_VOPRF
FLAG_VERIFIED = 0x01
BUCKET_BITS = 16
LABEL_PAD = 320  # label plaintexts are padded to this, so their length says nothing
# The client's own floor, whatever the relay says: never a prefix longer than this, and
# with any prefix at all, never a bucket of fewer entries (a relay that shrinks buckets
# to narrow a lookup down is refused rather than followed).
MAX_PREFIX_BITS = 10
MIN_BUCKET = 100


class NarrowingError(DecodeError):
    """the relay asked for a lookup narrower than the client allows"""


class ProofError(DecodeError):
    """an evaluation whose proof does not verify under the pinned discovery key"""


@dataclass(frozen=True, slots=True)
class DiscoveryKey:
    public_key: bytes
    key_id: str  # hex of SHA-256(public_key)[:8]


def discovery_key_id(public_key: bytes) -> str:
    return hashlib.sha256(public_key).digest()[:8].hex()


def verify_discovery_key(
    public_key: bytes, signed_by: str, signature: bytes, trusted_sealed: dict[str, bytes]
) -> DiscoveryKey:
    """The relay's VOPRF key, only if a trusted sealed-sender key (by key id hex) signed it
    (`Sig(sealed key, LABEL_DISCOVERY_KEY, public_key)`); DecodeError otherwise."""
    signer = trusted_sealed.get(signed_by)
    if signer is None:
        raise DecodeError("the discovery key is signed by a relay key this device does not trust")
    try:
        sign.verify(signer, LABEL_DISCOVERY_KEY, public_key, signature)
        imsg_oprf.deserialize_element(public_key)
    except BadSignatureError:
        raise DecodeError("the discovery key's signature does not verify") from None
    except imsg_oprf.OprfError:
        raise DecodeError("the discovery key is not a ristretto255 element") from None
    return DiscoveryKey(public_key, discovery_key_id(public_key))


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
    r, element = imsg_oprf.blind(handle.encode("utf-8"), rng, mode=MODE)
    return Blinded(handle, r, element)


def finalize_all(blinded: list[Blinded], evaluated: list[bytes], public_key: bytes, proof: bytes) -> list[bytes]:
    """Each handle's VOPRF output, only if the relay's one proof shows that every element
    was evaluated under `public_key` (the pinned key): ProofError otherwise, DecodeError
    when an element is malformed."""
    try:
        return voprf.finalize_batch(
            [b.handle.encode("utf-8") for b in blinded],
            [b.blind for b in blinded],
            evaluated,
            [b.element for b in blinded],
            public_key,
            proof,
        )
    except imsg_oprf.VerifyError as exc:
        raise ProofError(f"the relay's evaluation is not under its pinned discovery key: {exc}") from None
    except imsg_oprf.OprfError as exc:
        raise DecodeError(f"relay sent a bad evaluation: {exc}") from None


def check_prefix_bits(bits: int) -> None:
    if not 0 <= bits <= MAX_PREFIX_BITS:
        raise NarrowingError(
            f"the relay asked for {bits}-bit bucket prefixes; this client reads at most {MAX_PREFIX_BITS}"
        )


def check_bucket(bits: int, entries: int) -> None:
    """With a prefix at all, a bucket must hold MIN_BUCKET entries: a smaller one would
    narrow the lookup down to fewer candidates than the client accepts."""
    if bits > 0 and entries < MIN_BUCKET:
        raise NarrowingError(
            f"the relay served a bucket of {entries} entries at {bits}-bit prefixes; this client needs {MIN_BUCKET}"
        )


def sub_prefixes(prefix: int, first_bits: int, bits: int) -> list[int]:
    """The `bits`-bit prefixes inside the `first_bits`-bit `prefix`: what to read so that a
    lookup never says more about a handle than its first one did."""
    if bits <= first_bits:
        return [prefix >> (first_bits - bits)]
    extra = bits - first_bits
    return [(prefix << extra) | i for i in range(1 << extra)]


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
