"""The binary framing every wire structure uses: big-endian integers, length-prefixed
byte strings, and type-tagged public keys.

Every public key on the wire is `tag || raw`, and decoding checks the tag and the exact
length, so an X25519 key can never be read as an ML-KEM key or the reverse (the PQXDH
encoding-confusion finding, SECURITY-TESTS 18). Readers raise only `DecodeError`.
"""

from __future__ import annotations

import struct

from imsg.protocol.errors import DecodeError

# Type tags of public keys. 0x05 for X25519 follows Signal's DJB tag.
KEY_X25519 = 0x05
KEY_ED25519 = 0x06
KEY_MLKEM768 = 0x08
KEY_HPKE_MLKEM768_X25519 = 0x0A  # a device's sealed-sender key (HPKE KEM 0x647a)

_KEY_LENGTHS = {KEY_X25519: 32, KEY_ED25519: 32, KEY_MLKEM768: 1184, KEY_HPKE_MLKEM768_X25519: 1216}
_KEY_NAMES = {
    KEY_X25519: "x25519",
    KEY_ED25519: "ed25519",
    KEY_MLKEM768: "ml-kem-768",
    KEY_HPKE_MLKEM768_X25519: "mlkem768-x25519",
}

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


def encode_key(tag: int, raw: bytes) -> bytes:
    if len(raw) != _KEY_LENGTHS[tag]:
        raise ValueError(f"{_KEY_NAMES[tag]} key must be {_KEY_LENGTHS[tag]} bytes")
    return bytes((tag,)) + raw


def decode_key(tag: int, data: bytes) -> bytes:
    """Return the raw key from `tag || raw`, or raise DecodeError. An Ed25519 key must be a
    canonical encoding of a point that is not of small order (see `is_acceptable_ed25519`)."""
    if len(data) != 1 + _KEY_LENGTHS[tag] or data[0] != tag:
        raise DecodeError(f"expected a type-tagged {_KEY_NAMES[tag]} public key")
    raw = bytes(data[1:])
    if tag == KEY_ED25519 and not is_acceptable_ed25519(raw):
        raise DecodeError("ed25519 public key is of small order or not canonically encoded")
    return raw


_X25519_P = 2**255 - 19

# The y-coordinates of Ed25519's eight points of small order (the torsion subgroup E[8]):
# the identity (y = 1), the point of order 2 (y = -1), the two of order 4 (y = 0) and the
# four of order 8 (y = ±Y8). Every encoding of them (either sign bit, y or y + p) names a
# point whose signatures a forger can satisfy for many messages at once (with A of small
# order, [8][S]B = [8]R holds whatever the message: "Taming the many EdDSAs", Brendel et al.
# 2020); a key generated honestly is never one, so they are refused outright.
_ED25519_Y8 = 0x7A03AC9277FDC74EC6CC392CFA53202A0F67100D760B3CBA4FD84D3D706A17C7
_ED25519_SMALL_ORDER_Y = frozenset({1, _X25519_P - 1, 0, _ED25519_Y8, _X25519_P - _ED25519_Y8})


def is_acceptable_ed25519(raw: bytes) -> bool:
    """True if `raw` is a canonical Ed25519 point encoding (y below p) of a point that is
    not of small order. Points off the curve are left to the signature check (it fails)."""
    if len(raw) != 32:
        return False
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    return y < _X25519_P and y not in _ED25519_SMALL_ORDER_Y


def is_canonical_x25519(raw: bytes) -> bool:
    """True if `raw` is the one canonical encoding of its u-coordinate (below p, top bit
    clear). X25519 accepts the others and maps them to the same point, so a key that is
    not committed to by an AEAD or a signature must be canonical to be unmalleable."""
    return len(raw) == 32 and int.from_bytes(raw, "little") < _X25519_P


class Writer:
    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u8(self, v: int) -> Writer:
        self._parts.append(_U8.pack(v))
        return self

    def u16(self, v: int) -> Writer:
        self._parts.append(_U16.pack(v))
        return self

    def u32(self, v: int) -> Writer:
        self._parts.append(_U32.pack(v))
        return self

    def u64(self, v: int) -> Writer:
        self._parts.append(_U64.pack(v))
        return self

    def raw(self, b: bytes) -> Writer:
        self._parts.append(b)
        return self

    def key(self, tag: int, raw: bytes) -> Writer:
        self._parts.append(encode_key(tag, raw))
        return self

    def var(self, b: bytes) -> Writer:
        """Length-prefixed (u32) byte string."""
        self._parts.append(_U32.pack(len(b)))
        self._parts.append(b)
        return self

    def opt(self, b: bytes | None) -> Writer:
        """Optional byte string: a presence byte, then `var`."""
        if b is None:
            return self.u8(0)
        return self.u8(1).var(b)

    def bytes(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes):
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise DecodeError("expected bytes")
        self._data = bytes(data)
        self._pos = 0

    def _take(self, n: int) -> bytes:
        end = self._pos + n
        if n < 0 or end > len(self._data):
            raise DecodeError("truncated data")
        out = self._data[self._pos : end]
        self._pos = end
        return out

    def u8(self) -> int:
        return self._take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self._take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self._take(4), "big")

    def u64(self) -> int:
        return int.from_bytes(self._take(8), "big")

    def raw(self, n: int) -> bytes:
        return self._take(n)

    def key(self, tag: int) -> bytes:
        return decode_key(tag, self._take(1 + _KEY_LENGTHS[tag]))

    def var(self, max_len: int = 1 << 24) -> bytes:
        n = self.u32()
        if n > max_len:
            raise DecodeError("length field exceeds its limit")
        return self._take(n)

    def opt(self, max_len: int = 1 << 24) -> bytes | None:
        flag = self.u8()
        if flag == 0:
            return None
        if flag != 1:
            raise DecodeError("invalid presence flag")
        return self.var(max_len)

    def rest(self) -> bytes:
        out = self._data[self._pos :]
        self._pos = len(self._data)
        return out

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def end(self) -> None:
        """Require that every byte was consumed: trailing data is an error."""
        if self._pos != len(self._data):
            raise DecodeError("trailing bytes after structure")
