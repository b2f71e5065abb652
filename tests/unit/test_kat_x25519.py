"""X25519 known-answer tests through imsg.crypto.dh.

RFC 7748 §5.2 and §6.1 vectors, and every case of Wycheproof x25519_test.json. Cases
whose public key is low-order (all-zero shared secret) must raise ZeroSharedSecretError:
the non-contributory DH attack (SECURITY-TESTS.md row 8).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from imsg.crypto import dh
from imsg.crypto.errors import InvalidKeyError, ZeroSharedSecretError

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
h = bytes.fromhex


def _wycheproof_cases():
    data = json.loads((VECTORS / "wycheproof" / "x25519_test.json").read_text())
    assert data["algorithm"] == "XDH"
    cases = []
    for group in data["testGroups"]:
        assert group["curve"] == "curve25519"
        for t in group["tests"]:
            cases.append(pytest.param(t, id=f"tc{t['tcId']}"))
    assert len(cases) == data["numberOfTests"] == 518
    return cases


WYCHEPROOF = _wycheproof_cases()
_ZERO_FLAGS = {"ZeroSharedSecret", "LowOrderPublic"}


def _is_zero_case(t: dict) -> bool:
    return bool(_ZERO_FLAGS & set(t["flags"])) and t["shared"] == "00" * 32


# RFC 7748 §5.2: (scalar, u-coordinate, output u-coordinate). The scalars are given
# unclamped; X25519 clamps them.
RFC7748_5_2 = [
    (
        "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
        "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
        "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
    ),
    (
        "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
        "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
        "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
    ),
]


@pytest.mark.parametrize("scalar,u,out", RFC7748_5_2)
def test_rfc7748_5_2_vectors(scalar, u, out):
    assert dh.KeyPair(h(scalar)).exchange(h(u)) == h(out)


def test_rfc7748_5_2_iterated_1000():
    # k = u = 9; repeatedly k, u = X25519(k, u), k. Values after 1 and 1000 iterations.
    k = u = (9).to_bytes(32, "little")
    for i in range(1, 1001):
        k, u = dh.KeyPair(k).exchange(u), k
        if i == 1:
            assert k == h("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079")
    assert k == h("684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51")


def test_rfc7748_6_1_diffie_hellman():
    alice = dh.KeyPair(h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
    bob = dh.KeyPair(h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"))
    assert alice.public == h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert bob.public == h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert alice.exchange(bob.public) == shared
    assert bob.exchange(alice.public) == shared


@pytest.mark.parametrize("t", WYCHEPROOF)
def test_wycheproof_x25519(t):
    private = X25519PrivateKey.from_private_bytes(h(t["private"]))
    public = h(t["public"])
    if _is_zero_case(t):
        # Non-contributory DH: must never hand back the predictable all-zero secret.
        with pytest.raises(ZeroSharedSecretError):
            dh.dh(private, public)
        with pytest.raises(ZeroSharedSecretError):
            dh.KeyPair(h(t["private"])).exchange(public)
    else:
        # "valid" and "acceptable" (twist, non-canonical, special points): RFC 7748
        # defines the result, and if we compute one it must be that one.
        assert t["result"] in ("valid", "acceptable")
        assert dh.dh(private, public) == h(t["shared"])


def test_wycheproof_zero_cases_present():
    # Guard against a vector file that silently lost its attack cases.
    zero = [p.values[0] for p in WYCHEPROOF if _is_zero_case(p.values[0])]
    assert len(zero) >= 30
    assert all(_ZERO_FLAGS & set(t["flags"]) for t in zero)
    # Every case whose expected secret is all zeros is flagged as such.
    assert all(_is_zero_case(p.values[0]) for p in WYCHEPROOF if p.values[0]["shared"] == "00" * 32)


@pytest.mark.parametrize(
    "public",
    [
        bytes(32),  # u = 0, the identity
        (1).to_bytes(32, "little"),  # order 4
        (2**255 - 19).to_bytes(32, "little"),  # p, non-canonical encoding of 0
        (2**255 - 19 + 1).to_bytes(32, "little"),  # p + 1, non-canonical encoding of 1
        # a point of order 8 (from the libsignal/curve25519 low-order blacklist)
        h("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    ],
)
def test_low_order_points_rejected(public):
    with pytest.raises(ZeroSharedSecretError):
        dh.KeyPair(bytes(range(32))).exchange(public)


@pytest.mark.parametrize("n", [0, 31, 33])
def test_wrong_length_public_key(n):
    with pytest.raises(InvalidKeyError):
        dh.KeyPair(bytes(range(32))).exchange(b"\x09" * n)
