"""AES-256-GCM known-answer tests through imsg.crypto.aead.

Every Wycheproof aes_gcm_test.json case with a 256-bit key, 96-bit nonce and 128-bit
tag (the only parameters aead.py accepts). Invalid cases, and any change of length,
must raise AuthenticationError (SECURITY-TESTS.md row 15).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imsg.crypto import aead
from imsg.crypto.errors import AuthenticationError, InvalidKeyError

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
h = bytes.fromhex


def _wycheproof_cases():
    data = json.loads((VECTORS / "wycheproof" / "aes_gcm_256_96_test.json").read_text())
    assert data["algorithm"] == "AES-GCM"
    cases = []
    for g in data["testGroups"]:
        assert (g["keySize"], g["ivSize"], g["tagSize"]) == (256, 96, 128)
        cases += [pytest.param(t, id=f"tc{t['tcId']}") for t in g["tests"]]
    assert len(cases) == data["numberOfTests"] == 66
    return cases


WYCHEPROOF = _wycheproof_cases()


@pytest.mark.parametrize("t", WYCHEPROOF)
def test_wycheproof_aes_256_gcm(t):
    key, nonce, ad, msg = h(t["key"]), h(t["iv"]), h(t["aad"]), h(t["msg"])
    sealed = h(t["ct"]) + h(t["tag"])
    if t["result"] == "valid":
        assert aead.seal(key, nonce, msg, ad) == sealed
        assert aead.open_(key, nonce, sealed, ad) == msg
        # ad=None and ad=b"" are the same GCM input
        if not ad:
            assert aead.open_(key, nonce, sealed, None) == msg
    else:
        assert t["result"] == "invalid"
        with pytest.raises(AuthenticationError):
            aead.open_(key, nonce, sealed, ad)


def _valid_nonempty():
    return [p.values[0] for p in WYCHEPROOF if p.values[0]["result"] == "valid" and p.values[0]["msg"]]


def test_invalid_cases_present():
    assert sum(p.values[0]["result"] == "invalid" for p in WYCHEPROOF) >= 20


@pytest.mark.parametrize("t", _valid_nonempty()[:8], ids=lambda t: f"tc{t['tcId']}")
def test_append_or_truncate_one_byte_rejected(t):
    key, nonce, ad = h(t["key"]), h(t["iv"]), h(t["aad"])
    sealed = h(t["ct"]) + h(t["tag"])
    for mauled in (sealed + b"\x00", sealed + sealed[-1:], sealed[:-1], sealed[1:]):
        with pytest.raises(AuthenticationError):
            aead.open_(key, nonce, mauled, ad)
    for ad_mauled in (ad + b"\x00", ad[:-1] if ad else b"\x00"):
        with pytest.raises(AuthenticationError):
            aead.open_(key, nonce, sealed, ad_mauled)


def test_every_bit_of_a_short_message_is_authenticated():
    key, nonce, ad = bytes(range(32)), bytes(12), b"ad"
    sealed = aead.seal(key, nonce, b"hello", ad)
    assert len(sealed) == 5 + aead.TAG_LEN
    for i in range(len(sealed) * 8):
        mauled = bytearray(sealed)
        mauled[i // 8] ^= 1 << (i % 8)
        with pytest.raises(AuthenticationError):
            aead.open_(key, nonce, bytes(mauled), ad)


@pytest.mark.parametrize("n", [0, 1, 15])
def test_shorter_than_tag_rejected(n):
    with pytest.raises(AuthenticationError):
        aead.open_(bytes(32), bytes(12), bytes(n), None)


@pytest.mark.parametrize("key_len,nonce_len", [(16, 12), (24, 12), (31, 12), (32, 8), (32, 16), (32, 0)])
def test_wrong_key_or_nonce_length(key_len, nonce_len):
    with pytest.raises(InvalidKeyError):
        aead.seal(bytes(key_len), bytes(nonce_len), b"m", None)
    with pytest.raises(InvalidKeyError):
        aead.open_(bytes(key_len), bytes(nonce_len), bytes(32), None)
