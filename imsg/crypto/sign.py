"""Ed25519 (RFC 8032). Every signature we make is over `context || message`, where the
context is a `LABEL_*` constant, so a signature from one use can never verify in another
(the Threema cross-protocol lesson)."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from imsg.crypto.errors import BadSignatureError, InvalidKeyError

PUBLIC_KEY_LEN = 32
SIGNATURE_LEN = 64


class SigningKey:
    __slots__ = ("private", "public", "_key")

    def __init__(self, private: bytes):
        if len(private) != 32:
            raise InvalidKeyError("ed25519 private key must be 32 bytes")
        self._key = Ed25519PrivateKey.from_private_bytes(private)
        self.private = private
        self.public = self._key.public_key().public_bytes_raw()

    def sign(self, context: bytes, message: bytes) -> bytes:
        return self._key.sign(context + message)


def verify(public: bytes, context: bytes, message: bytes, signature: bytes) -> None:
    """Raise BadSignatureError unless `signature` is valid over `context || message`."""
    if len(public) != PUBLIC_KEY_LEN or len(signature) != SIGNATURE_LEN:
        raise BadSignatureError("signature or key has the wrong length")
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, context + message)
    except (InvalidSignature, ValueError):
        raise BadSignatureError("signature verification failed") from None
