"""Linking a new device to an account through the relay, end to end encrypted.

The existing device opens a relay channel and shows a one-time pairing code; the new device
types it. The code carries the channel id (the relay's) and an 80-bit secret (the existing
device's) that never reaches the relay:

    code       = base32(channel (8) || secret (10))            29 characters, shown in groups
    K_existing = HKDF(secret, salt = channel, info = LABEL_PROVISIONING || "/to-existing", 32)
    K_new      = HKDF(secret, salt = channel, info = LABEL_PROVISIONING || "/to-new", 32)
    box_i      = AES-256-GCM(K_dir, nonce = u96(i), plaintext_i, AD = LABEL_PROVISIONING || channel)

1. The new device sends its device keys and relay token (box 0 to the existing device).
2. The existing device signs it into the device list with the account key, registers it
   at the relay, and sends back the account: its key, the signed list, contacts and,
   if asked, recent history (box 0 to the new device).
3. The new device acknowledges (box 1 to the existing device), and only then does the
   existing device close the channel: closing deletes what the channel still holds.

The relay sees ciphertext only. Without the secret it cannot read either box, and it cannot
forge one: a box that fails authentication aborts the link on either side. The secret is
80 bits because an attacker who holds the relay would have to find it offline, against the
boxes, within the channel's ten-minute life — and 2^80 guesses is out of reach.
Payloads are JSON, parsed strictly, only after authentication.
"""

from __future__ import annotations

import base64
import json
from typing import Any, TypeVar

from imsg.crypto import aead
from imsg.crypto.errors import AuthenticationError
from imsg.crypto.kdf import hkdf
from imsg.crypto.labels import LABEL_PROVISIONING
from imsg.protocol.errors import DecodeError, DecryptionError

T = TypeVar("T")

CHANNEL_LEN = 8
SECRET_LEN = 10
TO_EXISTING = "existing"
TO_NEW = "new"
MAX_BOX = 256 * 1024
_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"  # 32 symbols, no 0/o, 1/l


def make_code(channel: bytes, secret: bytes) -> str:
    if len(channel) != CHANNEL_LEN or len(secret) != SECRET_LEN:
        raise ValueError("channel must be 8 bytes and secret 10 bytes")
    n = int.from_bytes(channel + secret, "big")
    chars = []
    for _ in range(29):  # 144 bits in 5-bit symbols
        chars.append(_ALPHABET[n & 31])
        n >>= 5
    text = "".join(reversed(chars))
    return "-".join(text[i : i + 5] for i in range(0, 29, 5))


def parse_code(code: str) -> tuple[bytes, bytes]:
    """(channel, secret) from a pairing code; tolerant of case, spaces and dashes."""
    text = "".join(c for c in code.lower() if c not in " -\t")
    if len(text) != 29 or any(c not in _ALPHABET for c in text):
        raise DecodeError("not a pairing code")
    n = 0
    for c in text:
        n = (n << 5) | _ALPHABET.index(c)
    if n >> 144:
        raise DecodeError("not a pairing code")
    raw = n.to_bytes(18, "big")
    return raw[:CHANNEL_LEN], raw[CHANNEL_LEN:]


def _key(secret: bytes, channel: bytes, direction: str) -> bytes:
    return hkdf(secret, salt=channel, info=LABEL_PROVISIONING + b"/to-" + direction.encode(), length=32)


def seal_box(secret: bytes, channel: bytes, direction: str, index: int, payload: dict[str, Any]) -> bytes:
    plaintext = json.dumps(payload, separators=(",", ":")).encode()
    if len(plaintext) + aead.TAG_LEN > MAX_BOX:
        raise ValueError("provisioning message too large")
    return aead.seal(
        _key(secret, channel, direction), index.to_bytes(12, "big"), plaintext, LABEL_PROVISIONING + channel
    )


def open_box(secret: bytes, channel: bytes, direction: str, index: int, box: bytes) -> dict[str, Any]:
    try:
        plaintext = aead.open_(
            _key(secret, channel, direction), index.to_bytes(12, "big"), box, LABEL_PROVISIONING + channel
        )
    except AuthenticationError:
        raise DecryptionError("pairing message failed authentication: wrong code or a forged message") from None
    try:
        doc = json.loads(plaintext)
    except ValueError:
        raise DecodeError("pairing message is not json") from None
    if not isinstance(doc, dict) or doc.get("v") != 1 or type(doc.get("v")) is not int:
        raise DecodeError("unsupported pairing message")
    return doc


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(doc: dict[str, Any], name: str, length: int | None = None) -> bytes:
    value = doc.get(name)
    if not isinstance(value, str):
        raise DecodeError(f"pairing field {name!r} missing")
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        raise DecodeError(f"pairing field {name!r} is not base64") from None
    if length is not None and len(raw) != length:
        raise DecodeError(f"pairing field {name!r} has the wrong length")
    return raw


def field(doc: dict[str, Any], name: str, kind: type[T]) -> T:
    value = doc.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DecodeError(f"pairing field {name!r} missing or of the wrong type")
    return value
