"""X25519 (RFC 7748) with the all-zero output check every DH of ours needs.

A low-order or identity public key makes the shared secret all zeros, which an attacker
can predict (the vodozemac/Olm non-contributory DH bug). OpenSSL already refuses it;
we check again so that no backend change can silently drop the check.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from imsg.crypto.errors import InvalidKeyError, ZeroSharedSecretError

KEY_LEN = 32
_ZERO = bytes(KEY_LEN)


class KeyPair:
    """An X25519 key pair kept as raw bytes (cheap to store and compare)."""

    __slots__ = ("private", "public", "_key")

    def __init__(self, private: bytes):
        if len(private) != KEY_LEN:
            raise InvalidKeyError("x25519 private key must be 32 bytes")
        self._key = X25519PrivateKey.from_private_bytes(private)
        self.private = private
        self.public = self._key.public_key().public_bytes_raw()

    @classmethod
    def from_seed(cls, seed: bytes) -> KeyPair:
        return cls(seed)

    def exchange(self, peer_public: bytes) -> bytes:
        return dh(self._key, peer_public)


def exchange(private: bytes, peer_public: bytes) -> bytes:
    """DH from a raw private key, without deriving its public key (one scalar
    multiplication instead of two: this is on the ratchet's hot path)."""
    if len(private) != KEY_LEN:
        raise InvalidKeyError("x25519 private key must be 32 bytes")
    return dh(X25519PrivateKey.from_private_bytes(private), peer_public)


def dh(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    if len(peer_public) != KEY_LEN:
        raise InvalidKeyError("x25519 public key must be 32 bytes")
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:
        raise ZeroSharedSecretError("x25519 shared secret is all zeros") from None
    if shared == _ZERO:  # not secret-dependent in any useful way: all-zero is public
        raise ZeroSharedSecretError("x25519 shared secret is all zeros")
    return shared
