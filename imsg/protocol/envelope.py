"""Envelopes: what the relay stores in a device's mailbox, and the content layer inside.

    Envelope   = version | kind | ...
      kind 0x01 IDENTIFIED: sender account id (16) | sender device id (4)
                            | var(SessionMessage) | ContentCiphertext
      kind 0x02 SEALED:     reserved for sealed sender (HPKE outer layer, DESIGN §3)

The relay never parses an envelope: the send path knows the sender only from the
request's authentication, so the sealed kind drops in without a new wire version.

Fan-out encrypts the content once (DESIGN §3): a fresh 256-bit content key seals the padded
content, and each device's session message carries only the key package:

    KeyPackage        = version | content key (32) | SHA-256(ContentCiphertext) (32)
    key || nonce      = HKDF-SHA256(content key, salt=None, info=LABEL_CONTENT_KEY, 44)
    ContentCiphertext = AES-256-GCM(key, nonce, pad(content), LABEL_CONTENT_AD)

The digest binds the content ciphertext to each recipient's authenticated key package,
so nobody who learns the content key (another recipient) can swap the content that a
different device receives. The receiver checks the digest, then the tag, then unpads.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from imsg.crypto import aead
from imsg.crypto.errors import AuthenticationError
from imsg.crypto.kdf import constant_time_equal, hkdf
from imsg.crypto.labels import LABEL_CONTENT_AD, LABEL_CONTENT_KEY
from imsg.protocol.consts import PAD_BLOCK, WIRE_VERSION
from imsg.protocol.encoding import Reader, Writer
from imsg.protocol.errors import DecodeError, DecryptionError
from imsg.protocol.identity import Rng
from imsg.protocol.session import Address

KIND_IDENTIFIED = 0x01
KIND_SEALED = 0x02
KEY_PACKAGE_LEN = 1 + 32 + 32
MAX_CONTENT_LEN = 64 * 1024  # padded plaintext; the relay's envelope cap is 96 KiB


@dataclass(frozen=True, slots=True)
class Envelope:
    kind: int
    sender: Address
    session_message: bytes
    content_ciphertext: bytes

    def encode(self) -> bytes:
        if self.kind != KIND_IDENTIFIED:
            raise ValueError("only identified envelopes are implemented")
        return (
            Writer()
            .u8(WIRE_VERSION)
            .u8(self.kind)
            .raw(self.sender.encode())
            .var(self.session_message)
            .raw(self.content_ciphertext)
            .bytes()
        )

    @classmethod
    def decode(cls, data: bytes) -> Envelope:
        r = Reader(data)
        if r.u8() != WIRE_VERSION:
            raise DecodeError("unsupported envelope version")
        kind = r.u8()
        if kind != KIND_IDENTIFIED:
            raise DecodeError("unsupported envelope kind")
        account = r.raw(16).hex()
        device = r.u32()
        session_message = r.var(max_len=8192)
        content = r.rest()
        if len(content) < aead.TAG_LEN:
            raise DecodeError("envelope has no content")
        return cls(kind, Address(account, device), session_message, content)


def pad(data: bytes, block: int = PAD_BLOCK) -> bytes:
    """ISO/IEC 7816-4 padding: 0x80 then zeros up to a multiple of `block`."""
    padded_len = (len(data) // block + 1) * block
    return data + b"\x80" + bytes(padded_len - len(data) - 1)


def unpad(data: bytes) -> bytes:
    end = data.rstrip(b"\x00")
    if not end or end[-1] != 0x80:
        raise DecodeError("invalid padding")
    return end[:-1]


def _content_cipher(content_key: bytes) -> tuple[bytes, bytes]:
    out = hkdf(content_key, salt=None, info=LABEL_CONTENT_KEY, length=44)
    return out[:32], out[32:]


def seal_content(content: bytes, rng: Rng) -> tuple[bytes, bytes]:
    """Encrypt content once. Returns (key package for every device, content ciphertext)."""
    if len(content) >= MAX_CONTENT_LEN:
        raise ValueError("message content too large")
    content_key = rng(32)
    key, nonce = _content_cipher(content_key)
    ciphertext = aead.seal(key, nonce, pad(content), LABEL_CONTENT_AD)
    package = bytes((WIRE_VERSION,)) + content_key + hashlib.sha256(ciphertext).digest()
    return package, ciphertext


def open_content(key_package: bytes, ciphertext: bytes) -> bytes:
    if len(key_package) != KEY_PACKAGE_LEN or key_package[0] != WIRE_VERSION:
        raise DecryptionError()
    content_key, digest = key_package[1:33], key_package[33:]
    if not constant_time_equal(hashlib.sha256(ciphertext).digest(), digest):
        raise DecryptionError()
    key, nonce = _content_cipher(content_key)
    try:
        padded = aead.open_(key, nonce, ciphertext, LABEL_CONTENT_AD)
    except AuthenticationError:
        raise DecryptionError() from None
    return unpad(padded)
