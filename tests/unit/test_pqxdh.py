"""PQXDH (imsg.protocol.pqxdh) and prekey bundles: agreement, signatures, type-tagged
key encodings, KEM implicit rejection and low-order keys.

SECURITY-TESTS rows 8, 16 and 18.
"""

from __future__ import annotations

import dataclasses

import pytest
from protocol_helpers import LOW_ORDER_POINTS, T0, SessionPair, seeded_rng

from imsg.crypto import kem
from imsg.crypto.errors import CryptoError
from imsg.crypto.labels import LABEL_DEVICE_LIST, LABEL_KEM_PREKEY, LABEL_SIGNED_PREKEY
from imsg.protocol import pqxdh
from imsg.protocol import session as sess
from imsg.protocol.encoding import (
    KEY_ED25519,
    KEY_MLKEM768,
    KEY_X25519,
    Reader,
    decode_key,
    encode_key,
    is_canonical_x25519,
)
from imsg.protocol.errors import DecodeError, RemoteProtocolError, UntrustedIdentityError
from imsg.protocol.identity import DeviceKeys
from imsg.protocol.prekeys import KemPreKey, SignedPreKey


def _respond(pair: SessionPair, init: pqxdh.Initiation) -> bytes:
    s = pair.bob.store
    return pqxdh.respond(
        pair.bob.device,
        init,
        s.get_signed_prekey(init.signed_prekey_id),
        s.get_kem_prekey(init.kem_prekey_id),
        s.get_one_time_prekey(init.one_time_prekey_id) if init.one_time_prekey_id else None,
    )


@pytest.mark.parametrize("one_time", [True, False])
@pytest.mark.parametrize("one_time_kem", [True, False])
def test_both_sides_derive_the_same_sk(one_time: bool, one_time_kem: bool):
    pair = SessionPair(seed=5)
    bundle = pair.bob.bundle(one_time=one_time, one_time_kem=one_time_kem)
    sk, init = pqxdh.initiate(pair.alice.device, pair.bob.device.identity.public, bundle, pair.alice.rng)
    assert (init.one_time_prekey_id is not None) == one_time
    assert len(init.kem_ciphertext) == kem.CIPHERTEXT_LEN
    assert _respond(pair, init) == sk
    assert len(sk) == 32


def test_one_time_prekey_contributes_to_sk():
    pair = SessionPair(seed=6)
    bundle = pair.bob.bundle(one_time=True)
    sk, init = pqxdh.initiate(pair.alice.device, pair.bob.device.identity.public, bundle, pair.alice.rng)
    without = dataclasses.replace(init, one_time_prekey_id=None)
    assert _respond(pair, without) != sk


def test_altered_kem_ciphertext_gives_another_sk_without_raising():
    """ML-KEM implicit rejection: a modified ciphertext decapsulates to a pseudorandom
    key, never an exception (SECURITY-TESTS 16)."""
    pair = SessionPair(seed=7)
    bundle = pair.bob.bundle()
    sk, init = pqxdh.initiate(pair.alice.device, pair.bob.device.identity.public, bundle, pair.alice.rng)
    for pos in (0, 500, kem.CIPHERTEXT_LEN - 1):
        ct = bytearray(init.kem_ciphertext)
        ct[pos] ^= 0x01
        other = _respond(pair, dataclasses.replace(init, kem_ciphertext=bytes(ct)))
        assert other != sk and len(other) == 32


def test_kem_ciphertext_is_bound_to_the_transcript():
    """Re-encapsulating to Bob's other KEM key (the relay's choice) cannot give the same SK."""
    pair = SessionPair(seed=8)
    b1 = pair.bob.bundle(one_time_kem=True)
    b2 = pair.bob.bundle(one_time_kem=False)
    assert b1.kem_prekey_id != b2.kem_prekey_id
    sk, init = pqxdh.initiate(pair.alice.device, pair.bob.device.identity.public, b1, pair.alice.rng)
    assert _respond(pair, dataclasses.replace(init, kem_prekey_id=b2.kem_prekey_id)) != sk


# --- bundle signatures (SECURITY-TESTS 18, 4) ---


def _initiate(pair: SessionPair, bundle, *, remote_ik=None, remote_signing=None):
    return sess.initiate(
        pair.alice.device,
        pair.alice.address,
        pair.bob.address,
        remote_ik if remote_ik is not None else pair.bob.device.identity.public,
        remote_signing if remote_signing is not None else pair.bob.device.signing.public,
        bundle,
        pair.alice.rng,
    )


def test_valid_bundle_verifies():
    pair = SessionPair()
    pair.bob.bundle().verify(pair.bob.device.signing.public)
    assert _initiate(pair, pair.bob.bundle()).pending is not None


def _bad_bundles(pair: SessionPair):
    b = pair.bob.bundle()
    mallory = DeviceKeys.generate(1, seeded_rng(99))
    other_spk = SignedPreKey.generate(pair.bob.device, 900, T0, seeded_rng(98))
    other_kem = KemPreKey.generate(mallory, 901, T0, seeded_rng(97), last_resort=True)

    def flipped(sig: bytes) -> bytes:
        return sig[:-1] + bytes([sig[-1] ^ 1])

    yield "spk sig flipped", dataclasses.replace(b, signed_prekey_signature=flipped(b.signed_prekey_signature))
    yield "kem sig flipped", dataclasses.replace(b, kem_prekey_signature=flipped(b.kem_prekey_signature))
    yield "spk replaced", dataclasses.replace(b, signed_prekey=mallory.identity.public)
    yield "spk from another signed prekey", dataclasses.replace(b, signed_prekey=other_spk.public)
    yield (
        "kem key by another device",
        dataclasses.replace(b, kem_prekey=other_kem.public, kem_prekey_signature=other_kem.signature),
    )
    # re-signed by the relay's own key
    yield (
        "spk re-signed by mallory",
        dataclasses.replace(
            b,
            signed_prekey=mallory.identity.public,
            signed_prekey_signature=mallory.signing.sign(
                LABEL_SIGNED_PREKEY, encode_key(KEY_X25519, mallory.identity.public)
            ),
        ),
    )
    # the two signatures swapped, and signatures from another context
    yield (
        "signatures swapped",
        dataclasses.replace(
            b, signed_prekey_signature=b.kem_prekey_signature, kem_prekey_signature=b.signed_prekey_signature
        ),
    )
    yield (
        "spk signed in the kem context",
        dataclasses.replace(
            b,
            signed_prekey_signature=pair.bob.device.signing.sign(
                LABEL_KEM_PREKEY, encode_key(KEY_X25519, b.signed_prekey)
            ),
        ),
    )
    yield (
        "spk signed in the device-list context",
        dataclasses.replace(
            b,
            signed_prekey_signature=pair.bob.device.signing.sign(
                LABEL_DEVICE_LIST, encode_key(KEY_X25519, b.signed_prekey)
            ),
        ),
    )
    yield (
        "spk signed without type tag",
        dataclasses.replace(
            b, signed_prekey_signature=pair.bob.device.signing.sign(LABEL_SIGNED_PREKEY, b.signed_prekey)
        ),
    )
    yield "empty signature", dataclasses.replace(b, signed_prekey_signature=b"")


def test_bad_bundle_signatures_are_untrusted():
    pair = SessionPair(seed=9)
    names = []
    for name, bundle in _bad_bundles(pair):
        names.append(name)
        with pytest.raises(UntrustedIdentityError):
            bundle.verify(pair.bob.device.signing.public)
        with pytest.raises(UntrustedIdentityError):
            _initiate(pair, bundle)
    assert len(names) == 11


def test_bundle_checked_against_the_device_signing_key():
    pair = SessionPair()
    with pytest.raises(UntrustedIdentityError):
        _initiate(pair, pair.bob.bundle(), remote_signing=pair.alice.device.signing.public)


# --- type-tagged key encodings (SECURITY-TESTS 18) ---


def test_x25519_key_presented_as_mlkem_is_rejected_at_decode():
    pair = SessionPair()
    x = pair.bob.bundle().signed_prekey
    k = pair.bob.bundle().kem_prekey
    for data in (
        encode_key(KEY_X25519, x),  # right bytes, X25519 tag
        bytes([KEY_MLKEM768]) + x,  # ML-KEM tag, X25519 length
        bytes([KEY_X25519]) + k,  # ML-KEM bytes, X25519 tag
    ):
        with pytest.raises(DecodeError):
            decode_key(KEY_MLKEM768, data)
    assert decode_key(KEY_MLKEM768, encode_key(KEY_MLKEM768, k)) == k


def test_mlkem_key_presented_as_x25519_is_rejected_at_decode():
    pair = SessionPair()
    k = pair.bob.bundle().kem_prekey
    x = pair.bob.bundle().signed_prekey
    for data in (
        encode_key(KEY_MLKEM768, k),
        bytes([KEY_X25519]) + k,
        bytes([KEY_MLKEM768]) + k[:32],
        encode_key(KEY_ED25519, x),
        b"",
        bytes([KEY_X25519]),
        encode_key(KEY_X25519, x) + b"\x00",
    ):
        with pytest.raises(DecodeError):
            decode_key(KEY_X25519, data)
    with pytest.raises(DecodeError):
        Reader(encode_key(KEY_MLKEM768, k)).key(KEY_X25519)
    with pytest.raises(DecodeError):
        Reader(encode_key(KEY_X25519, x) + bytes(1200)).key(KEY_MLKEM768)
    assert decode_key(KEY_X25519, encode_key(KEY_X25519, x)) == x


def test_ed25519_and_x25519_tags_are_distinct():
    pair = SessionPair()
    x = pair.bob.device.identity.public
    with pytest.raises(DecodeError):
        decode_key(KEY_ED25519, encode_key(KEY_X25519, x))
    with pytest.raises(DecodeError):
        decode_key(KEY_X25519, encode_key(KEY_ED25519, x))


def test_encode_key_refuses_wrong_length():
    with pytest.raises(ValueError):
        encode_key(KEY_MLKEM768, bytes(32))
    with pytest.raises(ValueError):
        encode_key(KEY_X25519, bytes(1184))


def test_malformed_mlkem_key_even_if_signed_fails_setup_cleanly():
    """A bundle whose KEM key is signed but not a valid ML-KEM key (e.g. a malicious
    device) must fail with a protocol error, not a backend exception."""
    pair = SessionPair()
    bad = b"\xff" * kem.PUBLIC_KEY_LEN
    sig = pair.bob.device.signing.sign(LABEL_KEM_PREKEY, encode_key(KEY_MLKEM768, bad))
    bundle = dataclasses.replace(pair.bob.bundle(), kem_prekey=bad, kem_prekey_signature=sig)
    with pytest.raises(RemoteProtocolError):
        _initiate(pair, bundle)


# --- low-order X25519 keys (SECURITY-TESTS 8) ---

_IDS = [p.hex()[:6] + ".." + p.hex()[-4:] for p in LOW_ORDER_POINTS]


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=_IDS)
def test_low_order_signed_prekey_fails_setup(point: bytes):
    """Even signed by the real device key, a low-order signed prekey cannot start a
    session: DH1 and DH3 would be all zeros."""
    pair = SessionPair()
    sig = pair.bob.device.signing.sign(LABEL_SIGNED_PREKEY, encode_key(KEY_X25519, point))
    bundle = dataclasses.replace(pair.bob.bundle(), signed_prekey=point, signed_prekey_signature=sig)
    with pytest.raises(RemoteProtocolError):
        _initiate(pair, bundle)
    with pytest.raises(CryptoError):
        pqxdh.initiate(pair.alice.device, pair.bob.device.identity.public, bundle, pair.alice.rng)


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=_IDS)
def test_low_order_remote_identity_key_fails_setup(point: bytes):
    pair = SessionPair()
    with pytest.raises(RemoteProtocolError):
        _initiate(pair, pair.bob.bundle(), remote_ik=point)


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=_IDS)
def test_low_order_one_time_prekey_fails_setup(point: bytes):
    pair = SessionPair()
    bundle = dataclasses.replace(pair.bob.bundle(), one_time_prekey=point)  # unsigned field
    with pytest.raises(RemoteProtocolError):
        _initiate(pair, bundle)


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=_IDS)
def test_low_order_base_key_fails_respond(point: bytes):
    pair = SessionPair()
    _, init = pqxdh.initiate(pair.alice.device, pair.bob.device.identity.public, pair.bob.bundle(), pair.alice.rng)
    with pytest.raises(CryptoError):
        _respond(pair, dataclasses.replace(init, base_key=point))
    with pytest.raises(CryptoError):
        _respond(pair, dataclasses.replace(init, identity_key=point))


def test_low_order_list_is_what_it_claims():
    assert len(LOW_ORDER_POINTS) == len(set(LOW_ORDER_POINTS)) >= 12
    assert sum(not is_canonical_x25519(p) for p in LOW_ORDER_POINTS) >= 6
