"""Bearer tokens: 32 random bytes a client creates at registration, base64url without padding.

The relay keeps only SHA-256 of the token bytes, so a copy of its database logs nobody in.
Lookup is by that digest; the stored digest is then compared again in constant time so the
check does not lean on the database's comparison.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re

from imsg_relay.errors import RelayError

TOKEN_BYTES = 32
TOKEN_CHARS = 43  # base64url of 32 bytes, without padding
TOKEN_PATTERN = r"^[A-Za-z0-9_-]{43}$"
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{43}")


def decode_token(token: str) -> bytes | None:
    """The token's 32 bytes, or None when it is not base64url of exactly 32 bytes."""
    if not isinstance(token, str) or not _TOKEN_RE.fullmatch(token):
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=")
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == TOKEN_BYTES else None


def token_hash(raw: bytes) -> bytes:
    return hashlib.sha256(raw).digest()


def bearer_token_hash(authorization: str | None) -> bytes:
    """SHA-256 of the token in an `Authorization: Bearer` header; 401 when there is none."""
    if not authorization:
        raise RelayError("unauthorized", "missing bearer token")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer":
        raise RelayError("unauthorized", "authorization is not a bearer token")
    raw = decode_token(value.strip())
    if raw is None:
        raise RelayError("unauthorized", "malformed bearer token")
    return token_hash(raw)


def same_digest(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)
