"""Blinded handles and discovery buckets, the relay's side (docs/PROTOCOL.md §8a).

The relay holds a VOPRF key (RFC 9497 mode 0x01, ristretto255-SHA512) derived from a
32-byte seed in a 0600 file of the data directory. For a handle H (canonical, UTF-8):

    output = VOPRF(skS, H)                       64 bytes, RFC 9497 Evaluate, mode 0x01
    tag    = SHA-256(LABEL_TAG || output)        the only form of H the relay stores
    bucket = first 16 bits of tag                buckets are prefixes of this number
    key    = SHA-256(LABEL_RECORD_KEY || output)
    record = nonce(12) || AES-256-GCM(key, nonce, account_id(16) || flags(1), aad = LABEL_RECORD || tag)

A client computes `output` through the oblivious protocol (the relay sees only a blinded
element), then reads the one bucket its tag falls in and opens the record whose tag
matches. The relay computes `output` itself only for a handle it is registering: it sees
that handle in the clear while it sends (or, with no verifier, accepts) the claim, and keeps
nothing but the tag and the sealed record.

Verifiable mode is what stops a relay from evaluating each lookup under a key of its own
(and then intersecting the buckets it was asked for, offline): the public key is signed by
the sealed-sender signing key (`GET /v1/discovery/key`), clients pin it, and every
evaluation carries one batched DLEQ proof that it was made under that key.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import imsg_oprf
from imsg_oprf import voprf
from imsg_relay.blinding import load_or_create_secret
from imsg_relay.sealed import key_id as sealed_key_id

LABEL_TAG = b"imsg/v1/discovery-tag"
LABEL_RECORD_KEY = b"imsg/v1/discovery-record-key"
LABEL_RECORD = b"imsg/v1/discovery-record"
LABEL_DISCOVERY_KEY = b"imsg/v1/sig/discovery-key"  # the sealed-sender key signs the VOPRF key
MODE = imsg_oprf.MODE_VOPRF
KEY_INFO = b"imsg/v1/relay-discovery-key"
FLAG_VERIFIED = 0x01
BUCKET_BITS = 16  # tags are bucketed by their first 16 bits
# The relay picks the prefix length so that a bucket holds at least this many registered
# handles on average: what a lookup reveals is "one of ~MIN_BUCKET registered handles".
MIN_BUCKET = 256
# Never past the clients' own ceiling (imsg.protocol.discovery.MAX_PREFIX_BITS): a client
# refuses a longer prefix, so a larger registry just gets larger buckets.
MAX_PREFIX_BITS = 10


class DiscoveryKey:
    def __init__(self, seed: bytes) -> None:
        # Mode 0x01: the same seed gives another key than the mode-0x00 relay it may have
        # been (the DST carries the mode), so old tags are simply never found again.
        self.sk, self.pk = imsg_oprf.derive_key_pair(seed, KEY_INFO, MODE)
        self.key_id = key_id(self.pk)

    @classmethod
    def load(cls, path: Path) -> DiscoveryKey:
        return cls.from_seed(load_or_create_secret(path))

    @classmethod
    def from_seed(cls, seed: bytes) -> DiscoveryKey:
        imsg_oprf.require_libsodium()
        return cls(seed)

    def evaluate_blinded(self, elements: list[bytes]) -> tuple[list[bytes], bytes]:
        """Each element evaluated, and one proof for them all (DeserializeError: a bad one)."""
        return voprf.blind_evaluate_batch(self.sk, self.pk, elements, os.urandom)

    def output(self, handle: str) -> bytes:
        return imsg_oprf.evaluate(self.sk, handle.encode("utf-8"), MODE)

    def signed(self, signer: Ed25519PrivateKey) -> dict[str, str]:
        """What GET /v1/discovery/key serves: the public key under the sealed-sender key's
        signature, so a client follows it only through keys it already trusts."""
        return {
            "public_key": base64.b64encode(self.pk).decode("ascii"),
            "key_id": self.key_id.hex(),
            "signed_by": sealed_key_id(signer).hex(),
            "signature": base64.b64encode(signer.sign(LABEL_DISCOVERY_KEY + self.pk)).decode("ascii"),
        }


def key_id(public_key: bytes) -> bytes:
    return hashlib.sha256(public_key).digest()[:8]


def tag_for(output: bytes) -> bytes:
    return hashlib.sha256(LABEL_TAG + output).digest()


def seal_record(output: bytes, account_id: str, verified: bool) -> bytes:
    key = hashlib.sha256(LABEL_RECORD_KEY + output).digest()
    nonce = os.urandom(12)
    plain = bytes.fromhex(account_id) + bytes([FLAG_VERIFIED if verified else 0])
    return nonce + AESGCM(key).encrypt(nonce, plain, LABEL_RECORD + tag_for(output))


def prefix_bits(registered: int) -> int:
    """The prefix length for `registered` discoverable handles: the largest b with
    registered / 2^b >= MIN_BUCKET (0 below 2 * MIN_BUCKET: one bucket holds them all)."""
    bits = 0
    while bits < MAX_PREFIX_BITS and registered >> (bits + 1) >= MIN_BUCKET:
        bits += 1
    return bits


def bucket_range(prefix: int, bits: int) -> tuple[int, int]:
    shift = BUCKET_BITS - bits
    return prefix << shift, ((prefix + 1) << shift) - 1
