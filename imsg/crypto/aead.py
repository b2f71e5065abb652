"""AES-256-GCM. 96-bit nonces; callers guarantee a key/nonce pair is never reused
(every message key is used once, stream segments carry a counter in the nonce)."""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from imsg.crypto.errors import AuthenticationError, InvalidKeyError

KEY_LEN = 32
NONCE_LEN = 12
TAG_LEN = 16


def seal(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes | None) -> bytes:
    if len(key) != KEY_LEN or len(nonce) != NONCE_LEN:
        raise InvalidKeyError("aead key must be 32 bytes and nonce 12 bytes")
    return AESGCM(key).encrypt(nonce, plaintext, ad)


def open_(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes | None) -> bytes:
    if len(key) != KEY_LEN or len(nonce) != NONCE_LEN:
        raise InvalidKeyError("aead key must be 32 bytes and nonce 12 bytes")
    if len(ciphertext) < TAG_LEN:
        raise AuthenticationError("ciphertext shorter than its authentication tag")
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, ad)
    except InvalidTag:
        raise AuthenticationError("failed to decrypt and authenticate: data corrupted or tampered with") from None
