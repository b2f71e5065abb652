"""Ed25519 public keys of small order (and non-canonical encodings) are refused on decode.

The vectors are every encoding of the eight points of the torsion subgroup E[8]: the
canonical ones (as in libsodium's blocklist and "Taming the many EdDSAs", Brendel et al.
2020, Table 6) and the non-canonical ones (y + p, and the sign bit set where x = 0). The
test proves each really is of small order with its own little Edwards arithmetic, so the
list is not taken on trust."""

from __future__ import annotations

import pytest

from imsg.crypto import sign
from imsg.protocol.encoding import KEY_ED25519, Reader, decode_key, encode_key, is_acceptable_ed25519
from imsg.protocol.errors import DecodeError
from imsg.protocol.identity import AccountKey, DeviceKeys, DeviceList, decode_device_list

SMALL_ORDER_ENCODINGS = [
    # canonical
    "0100000000000000000000000000000000000000000000000000000000000000",  # identity, order 1
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # order 2
    "0000000000000000000000000000000000000000000000000000000000000000",  # order 4
    "0000000000000000000000000000000000000000000000000000000000000080",  # order 4
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",  # order 8
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",  # order 8
    # non-canonical: x = 0 with the sign bit set, and y + p
    "0100000000000000000000000000000000000000000000000000000000000080",  # identity, x "negative"
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",  # order 2, x "negative"
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p + 1: identity
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p: order 4
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
]

P = 2**255 - 19
D = (-121665 * pow(121666, P - 2, P)) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)


def _decompress(raw: bytes) -> tuple[int, int]:
    n = int.from_bytes(raw, "little")
    y, sign_bit = (n & ((1 << 255) - 1)) % P, n >> 255
    u, v = (y * y - 1) % P, (D * y * y + 1) % P
    x = (u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P)) % P
    if (v * x * x - u) % P:
        x = x * SQRT_M1 % P
    assert (v * x * x - u) % P == 0, "not on the curve"
    if x & 1 != sign_bit and x:
        x = P - x
    return x, y


def _add(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    (x1, y1), (x2, y2) = a, b
    t = D * x1 * x2 * y1 * y2 % P
    return (
        (x1 * y2 + x2 * y1) * pow(1 + t, P - 2, P) % P,
        (y1 * y2 + x1 * x2) * pow(1 - t, P - 2, P) % P,
    )


@pytest.mark.parametrize("encoding", SMALL_ORDER_ENCODINGS)
def test_small_order_key_is_refused_on_decode(encoding):
    raw = bytes.fromhex(encoding)
    point = _decompress(raw)
    for _ in range(3):
        point = _add(point, point)
    assert point == (0, 1), "the vector is not of small order"
    assert not is_acceptable_ed25519(raw)
    with pytest.raises(DecodeError):
        decode_key(KEY_ED25519, bytes([KEY_ED25519]) + raw)
    with pytest.raises(DecodeError):
        Reader(bytes([KEY_ED25519]) + raw).key(KEY_ED25519)


def test_a_non_canonical_y_is_refused():
    y = (1 << 255) - 1 - 3  # y = p + 15: not a small-order point, but y >= p
    assert not is_acceptable_ed25519(y.to_bytes(32, "little"))


def test_device_list_with_a_small_order_account_key_is_refused():
    account = AccountKey.generate(lambda n: bytes(range(n)))
    device = DeviceKeys.generate(1, lambda n: bytes(range(100, 100 + n)))
    signed = account.sign_device_list(DeviceList(account.public, serial=1, signed_at=1, devices=(device.entry(1),)))
    decode_device_list(signed)  # the honest list decodes
    bad = signed.replace(encode_key(KEY_ED25519, account.public), bytes([KEY_ED25519]) + bytes(32), 1)
    with pytest.raises(DecodeError):
        decode_device_list(bad)


def test_honest_keys_are_accepted():
    for seed in range(64):
        public = sign.SigningKey(bytes([seed]) * 32).public
        assert decode_key(KEY_ED25519, encode_key(KEY_ED25519, public)) == public
