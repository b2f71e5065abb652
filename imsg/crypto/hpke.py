"""HPKE (RFC 9180, base mode) with the ML-KEM-768 + X25519 hybrid KEM of
draft-ietf-hpke-pq (KEM 0x647a, "MLKEM768-X25519"), HKDF-SHA256 (0x0001) and
ChaCha20-Poly1305 (0x0003), from pyca `cryptography`'s `hpke` module.

Why the hybrid: the sealed-sender layer hides who wrote to whom, and a recording of
today's envelopes is worth decrypting later ("harvest now, decrypt later"). With the hybrid
KEM the outer layer stays closed unless both ML-KEM-768 and X25519 fall. The cost is size:
an encapsulation is 1120 bytes instead of 32 (docs/PROTOCOL.md §6e gives the figures).

A private key is the KEM's 32-byte seed (draft-ietf-hpke-pq §4: Nsk = 32), expanded as
the hybrid KEM draft says: SHAKE256(seed, 96) = ML-KEM seed (64) || X25519 scalar (32).
The public key is ML-KEM encapsulation key (1184) || X25519 public key (32).
Known-answer tests: tests/unit/test_kat_hpke.py (RFC 9180 A.2, draft-ietf-hpke-pq A.5).
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import hpke as _hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from imsg.crypto.errors import AuthenticationError, InvalidKeyError

SEED_LEN = 32
PUBLIC_KEY_LEN = 1184 + 32
ENC_LEN = 1088 + 32  # the KEM ciphertext that leads every sealed message
TAG_LEN = 16
OVERHEAD = ENC_LEN + TAG_LEN

SUITE = _hpke.Suite(_hpke.KEM.MLKEM768_X25519, _hpke.KDF.HKDF_SHA256, _hpke.AEAD.CHACHA20_POLY1305)


def _expand(seed: bytes) -> tuple[mlkem.MLKEM768PrivateKey, x25519.X25519PrivateKey]:
    if len(seed) != SEED_LEN:
        raise InvalidKeyError("hpke seed must be 32 bytes")
    expanded = hashlib.shake_256(seed).digest(96)
    return (
        mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64]),
        x25519.X25519PrivateKey.from_private_bytes(expanded[64:]),
    )


class HpkeKeyPair:
    """A recipient key pair of the hybrid KEM, from its 32-byte seed."""

    __slots__ = ("seed", "public", "_key")

    def __init__(self, seed: bytes):
        pq, classic = _expand(seed)
        self.seed = seed
        self.public = pq.public_key().public_bytes_raw() + classic.public_key().public_bytes_raw()
        self._key = _hpke.MLKEM768X25519PrivateKey(pq, classic)

    def open(self, sealed: bytes, info: bytes) -> bytes:
        """enc || ciphertext -> plaintext; AuthenticationError on any failure."""
        if len(sealed) < OVERHEAD:
            raise AuthenticationError()
        try:
            return SUITE.decrypt(sealed, self._key, info=info)
        except Exception:  # cryptography raises InvalidTag or ValueError; all mean the same
            raise AuthenticationError() from None


def public_key(raw: bytes) -> _hpke.MLKEM768X25519PublicKey:
    if len(raw) != PUBLIC_KEY_LEN:
        raise InvalidKeyError("hpke public key must be 1216 bytes")
    try:
        return _hpke.MLKEM768X25519PublicKey(
            mlkem.MLKEM768PublicKey.from_public_bytes(raw[:1184]), x25519.X25519PublicKey.from_public_bytes(raw[1184:])
        )
    except ValueError:
        raise InvalidKeyError("hpke public key is malformed") from None


def seal(public: bytes, plaintext: bytes, info: bytes) -> bytes:
    """Single-shot base-mode HPKE: enc (1120) || ciphertext (len + 16)."""
    return SUITE.encrypt(plaintext, public_key(public), info=info)
