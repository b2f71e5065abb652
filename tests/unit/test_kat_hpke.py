"""HPKE known-answer tests (RFC 9180 base mode; draft-ietf-hpke-pq MLKEM768-X25519).

`cryptography`'s public HPKE API is single-shot with empty AAD, and the published vectors'
first encryption uses AAD "Count-0"; so the decryptions go through the module's own
`_decrypt_with_aad` (the same code path with the AAD exposed). Only sequence number 0 can be
checked that way: single-shot HPKE never uses another. The deterministic encapsulations
(ikmE) cannot be replayed either: `cryptography` takes no ephemeral key. What is checked:
the recipient key derives the published public key, and the published `enc || ct`
decrypts to the published plaintext under the published info and AAD (so the KEM's
Decap, the key schedule and the AEAD all match the spec), and one flipped byte fails.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cryptography.hazmat.bindings._rust import openssl as rust_openssl
from cryptography.hazmat.primitives import hpke as chpke
from cryptography.hazmat.primitives.asymmetric import x25519

from imsg.crypto import hpke
from imsg.crypto.errors import AuthenticationError

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "hpke"
_AEADS = {1: chpke.AEAD.AES_128_GCM, 2: chpke.AEAD.AES_256_GCM, 3: chpke.AEAD.CHACHA20_POLY1305}
_KDFS = {1: chpke.KDF.HKDF_SHA256, 17: chpke.KDF.SHAKE256}


def _decrypt(suite, private, v: dict, enc_ct: bytes) -> bytes:
    first = v["encryptions"][0]
    return rust_openssl.hpke._decrypt_with_aad(
        suite, enc_ct, private, info=bytes.fromhex(v["info"]), aad=bytes.fromhex(first["aad"])
    )


def _check(suite, private, v: dict) -> None:
    first = v["encryptions"][0]
    enc_ct = bytes.fromhex(v["enc"]) + bytes.fromhex(first["ct"])
    assert _decrypt(suite, private, v, enc_ct) == bytes.fromhex(first["pt"])
    for i in (0, len(v["enc"]) // 2 - 1, len(enc_ct) - 1):  # in enc, at its end, in the tag
        flipped = bytearray(enc_ct)
        flipped[i] ^= 0x01
        with pytest.raises(Exception):
            _decrypt(suite, private, v, bytes(flipped))


RFC = json.loads((VECTORS / "rfc9180_x25519_base.json").read_text())


@pytest.mark.parametrize("v", RFC, ids=lambda v: f"aead{v['aead_id']}")
def test_rfc9180_dhkem_x25519_base_mode(v):
    assert (v["mode"], v["kem_id"], v["kdf_id"]) == (0, 0x20, 1)
    sk = x25519.X25519PrivateKey.from_private_bytes(bytes.fromhex(v["skRm"]))
    assert sk.public_key().public_bytes_raw().hex() == v["pkRm"]
    _check(chpke.Suite(chpke.KEM.X25519, chpke.KDF.HKDF_SHA256, _AEADS[v["aead_id"]]), sk, v)


PQ = json.loads((VECTORS / "hpke_pq_mlkem768_x25519.json").read_text())


@pytest.mark.parametrize("v", PQ, ids=lambda v: f"kdf{v['kdf_id']}")
def test_hpke_pq_mlkem768_x25519(v):
    """Our key expansion (imsg.crypto.hpke) gives the published pkRm from the 32-byte skRm."""
    assert v["kem_id"] == 0x647A and len(bytes.fromhex(v["skRm"])) == hpke.SEED_LEN
    pair = hpke.HpkeKeyPair(bytes.fromhex(v["skRm"]))
    assert pair.public.hex() == v["pkRm"]
    assert len(bytes.fromhex(v["enc"])) == hpke.ENC_LEN
    _check(chpke.Suite(chpke.KEM.MLKEM768_X25519, _KDFS[v["kdf_id"]], _AEADS[v["aead_id"]]), pair._key, v)


def _draft_field(text: str, name: str) -> str:
    m = re.search(r"^\s*" + name + r": ([0-9a-f]+(?:\n\s+[0-9a-f]+$)*)", text, re.M)
    assert m, name
    return re.sub(r"\s", "", m.group(1))


def test_draft_ietf_hpke_pq_05_appendix_a5_is_our_exact_suite():
    """A.5 of draft-ietf-hpke-pq-05: MLKEM768-X25519, HKDF-SHA256, ChaCha20Poly1305, which
    is `imsg.crypto.hpke.SUITE`."""
    text = (VECTORS / "draft-ietf-hpke-pq-05.A.5.txt").read_text()
    assert (_draft_field(text, "kem_id"), _draft_field(text, "kdf_id"), _draft_field(text, "aead_id")) == (
        "25722",
        "1",
        "3",
    )
    v = {k: _draft_field(text, k) for k in ("info", "skRm", "pkRm", "enc")}
    v["encryptions"] = [{k: _draft_field(text, k) for k in ("pt", "aad", "ct")}]
    pair = hpke.HpkeKeyPair(bytes.fromhex(v["skRm"]))
    assert pair.public.hex() == v["pkRm"]
    _check(hpke.SUITE, pair._key, v)


def test_seal_open_round_trip_and_failures():
    pair = hpke.HpkeKeyPair(bytes(range(32)))
    sealed = hpke.seal(pair.public, b"inner", b"info")
    assert len(sealed) == hpke.OVERHEAD + len(b"inner")
    assert pair.open(sealed, b"info") == b"inner"
    with pytest.raises(AuthenticationError):
        pair.open(sealed, b"other info")
    with pytest.raises(AuthenticationError):
        hpke.HpkeKeyPair(bytes(32)).open(sealed, b"info")
    for i in (0, hpke.ENC_LEN - 1, hpke.ENC_LEN, len(sealed) - 1):
        bad = bytearray(sealed)
        bad[i] ^= 0x80
        with pytest.raises(AuthenticationError):
            pair.open(bytes(bad), b"info")
    with pytest.raises(AuthenticationError):
        pair.open(sealed[: hpke.OVERHEAD - 1], b"info")
