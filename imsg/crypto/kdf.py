"""HKDF-SHA256 (RFC 5869) and HMAC-SHA256.

HKDF comes from pyca `cryptography`. The one-block HMAC used by the ratchet's chain KDF
uses the standard library's `hmac.digest`, which is the same OpenSSL HMAC behind a
cheaper call (2 µs against 4 µs for a `cryptography` HMAC object); the ratchet calls it
twice a message, so the difference is a fifth of the per-message budget.
"""

from __future__ import annotations

import hmac as _hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

HASH_LEN = 32


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    return _hmac.digest(key, data, "sha256")


def hkdf(ikm: bytes, *, salt: bytes | None, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 extract-then-expand. `salt=None` means HashLen zero bytes."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def constant_time_equal(a: bytes, b: bytes) -> bool:
    """Compare secrets (tags, tokens, digests) without leaking where they differ."""
    return _hmac.compare_digest(a, b)
