"""Sealed sender's wire pieces (imsg/protocol/sealed.py): certificates, the relay-key
chain, sealed envelopes and their padding, the access key, device lists with sealed keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imsg.crypto import hpke, sign
from imsg.crypto.labels import LABEL_RELAY_KEY, LABEL_SENDER_CERTIFICATE
from imsg.protocol import sealed
from imsg.protocol.consts import SEALED_BUCKETS
from imsg.protocol.encoding import KEY_ED25519, KEY_HPKE_MLKEM768_X25519, encode_key
from imsg.protocol.errors import CertificateError, DecodeError, DecryptionError, ProtocolError
from imsg.protocol.identity import AccountKey, DeviceKeys, DeviceList, decode_device_list, verify_device_list
from imsg.protocol.session import Address

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "imsg" / "protocol-v1.json").read_text())
RELAY = sign.SigningKey(bytes(range(192, 224)))
ALICE = Address("aa" * 16, 1)
BOB = Address("bb" * 16, 2)
NOW = 1_700_000_000_000


def cert(key=RELAY, sender=ALICE, identity=bytes([9]) * 32, expires=NOW + 3_600_000, key_id=None) -> bytes:
    body = sealed.certificate_body(key_id or sealed.relay_key_id(key.public), sender, identity, expires)
    return body + key.sign(LABEL_SENDER_CERTIFICATE, body)


def test_certificate_vector_verifies_and_decodes():
    raw = bytes.fromhex(VECTORS["sender_certificate"])
    c = sealed.SenderCertificate.decode(raw)
    assert len(raw) == sealed.CERTIFICATE_LEN == 134
    assert c.sender.device_id == 1 and c.expires_at == 1_700_086_400_000
    c.verify([bytes.fromhex(VECTORS["relay_key_public"])], 1_700_086_400_000)  # valid up to its expiry


def test_expired_forged_and_untrusted_certificates_are_rejected():
    good = sealed.SenderCertificate.decode(cert())
    good.verify([RELAY.public], NOW)
    with pytest.raises(CertificateError, match="expired"):
        good.verify([RELAY.public], NOW + 3_600_001)
    other = sign.SigningKey(bytes(32))
    with pytest.raises(CertificateError, match="does not trust"):
        good.verify([other.public], NOW)
    # Signed by another key that claims the relay key's id: the signature fails.
    forged = sealed.SenderCertificate.decode(cert(key=other, key_id=sealed.relay_key_id(RELAY.public)))
    with pytest.raises(CertificateError, match="signature"):
        forged.verify([RELAY.public], NOW)
    # Every single-bit change of a valid certificate is rejected (decode or verify).
    raw = cert()
    for i in range(len(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0x01
        with pytest.raises((CertificateError, DecodeError)):
            sealed.SenderCertificate.decode(bytes(bad)).verify([RELAY.public], NOW)
    with pytest.raises(DecodeError):
        sealed.SenderCertificate.decode(raw + b"\x00")


def test_relay_key_rotation_is_followed_only_through_endorsements():
    k1, k2, k3 = (sign.SigningKey(bytes([i]) * 32) for i in (1, 2, 3))

    def endorse(old, new):
        return old.sign(LABEL_RELAY_KEY, encode_key(KEY_ED25519, new.public))

    chain = [(k1.public, None), (k2.public, endorse(k1, k2)), (k3.public, endorse(k2, k3))]
    assert set(sealed.endorsed_keys([k1.public], chain)) == {k1.public, k2.public, k3.public}
    # k3 endorsed by a key that is not its predecessor (the relay swapped keys): not followed.
    bad = [(k1.public, None), (k2.public, endorse(k1, k2)), (k3.public, endorse(k1, k3))]
    assert set(sealed.endorsed_keys([k1.public], bad)) == {k1.public, k2.public}
    # No endorsement at all: nothing new is trusted.
    assert sealed.endorsed_keys([k1.public], [(k1.public, None), (k2.public, None)]) == [k1.public]
    # A chain that does not contain any trusted key: nothing new.
    assert sealed.endorsed_keys([k1.public], chain[1:]) == [k1.public]


def test_access_key_vector_and_length():
    assert sealed.access_key(bytes(range(224, 256))).hex() == VECTORS["access_key"]
    assert len(sealed.access_key(bytes(32))) == 16
    assert sealed.access_key(bytes(32)) != sealed.access_key(bytes([1]) + bytes(31))
    with pytest.raises(ValueError):
        sealed.access_key(b"")


@pytest.fixture(scope="module")
def bob_keys():
    return DeviceKeys(2, bytes(range(32)), bytes(range(32, 64))).sealed


@pytest.mark.parametrize("content_len", [0, 100, 500, 3000, 20_000, 70_000])
def test_sealed_envelope_round_trip_is_padded_to_a_bucket(bob_keys, content_len):
    c = cert()
    env = sealed.seal_envelope(BOB, bob_keys.public, c, b"s" * 200, b"c" * content_len)
    assert len(env) in SEALED_BUCKETS and env[:2] == b"\x01\x02"
    opened = sealed.open_envelope(env, BOB, bob_keys)
    assert (
        opened.certificate.body + opened.certificate.signature,
        opened.session_message,
        opened.content_ciphertext,
    ) == (c, b"s" * 200, b"c" * content_len)


def test_sizes_between_buckets_use_the_next_bucket(bob_keys):
    base = 2 + hpke.OVERHEAD + 1 + 4 + len(cert()) + 4 + 4
    for b in SEALED_BUCKETS[:3]:
        for total in (b - 1, b, b + 1):
            n = total - base
            env = sealed.seal_envelope(BOB, bob_keys.public, cert(), b"", b"x" * n)
            # the bucket leaves room for the largest kind-specific parts (none here)
            assert len(env) == sealed.bucket(min(total + sealed.KIND_HEADROOM, SEALED_BUCKETS[-1]))
    with pytest.raises(ValueError):
        sealed.seal_envelope(BOB, bob_keys.public, cert(), b"", b"x" * SEALED_BUCKETS[-1])


def test_sealed_envelope_tampering_and_misdelivery_fail_uniformly(bob_keys):
    env = sealed.seal_envelope(BOB, bob_keys.public, cert(), b"session", b"content")
    for i in (2, 100, hpke.ENC_LEN + 2, len(env) // 2, len(env) - 1):
        bad = bytearray(env)
        bad[i] ^= 0x01
        with pytest.raises(DecryptionError):
            sealed.open_envelope(bytes(bad), BOB, bob_keys)
    # The HPKE info binds the recipient address: the same key under another address fails.
    with pytest.raises(DecryptionError):
        sealed.open_envelope(env, Address(BOB.account_id, 3), bob_keys)
    # Another device's key cannot open it.
    with pytest.raises(DecryptionError):
        sealed.open_envelope(env, BOB, DeviceKeys(2, bytes(32), bytes(32)).sealed)
    # Not a bucket size (truncated or extended): refused before any decryption.
    for data in (env[:-1], env + b"\x00", b"", b"\x01\x01" + env[2:]):
        with pytest.raises(DecodeError):
            sealed.open_envelope(data, BOB, bob_keys)


def test_nonzero_padding_and_bad_inner_framing_are_rejected(bob_keys):
    from imsg.protocol.encoding import Writer

    info = b"imsg/v1/sealed/envelope" + BOB.encode()
    inner = Writer().u8(1).var(cert()).var(b"s").var(b"c").bytes()
    size = 2 + hpke.OVERHEAD + len(inner)
    pad = bytearray(SEALED_BUCKETS[0] - size)
    pad[-1] = 1
    with pytest.raises(DecodeError, match="padding"):
        sealed.open_envelope(b"\x01\x02" + hpke.seal(bob_keys.public, inner + bytes(pad), info), BOB, bob_keys)
    wrong_version = b"\x02" + inner[1:] + bytes(SEALED_BUCKETS[0] - size)
    with pytest.raises(DecodeError):
        sealed.open_envelope(b"\x01\x02" + hpke.seal(bob_keys.public, wrong_version, info), BOB, bob_keys)


@settings(deadline=None)  # examples: the profile (ci: 10,000, R9)
@given(st.binary(min_size=0, max_size=300), st.sampled_from(SEALED_BUCKETS[:2]))
def test_open_envelope_raises_only_protocol_errors(bob_keys, junk, size):
    data = (b"\x01\x02" + junk + bytes(size))[:size]
    with pytest.raises(ProtocolError):
        sealed.open_envelope(data, BOB, bob_keys)


def test_device_list_carries_the_sealed_key_signed():
    ak = AccountKey(bytes(range(32)))
    d1 = DeviceKeys(1, bytes(range(64, 96)), bytes(range(96, 128)))
    blob = ak.sign_device_list(DeviceList(ak.public, 1, NOW, (d1.entry(NOW),)))
    entry = verify_device_list(blob, ak.public).device(1)
    assert entry.sealed_key == d1.sealed.public and len(entry.sealed_key) == hpke.PUBLIC_KEY_LEN
    assert entry.sealed_key.hex() == VECTORS["sealed_device_key_public"]
    # The key derives from the identity key alone (one place makes devices): same seed, same key.
    assert DeviceKeys(7, d1.identity.private, bytes(32)).sealed.public == d1.sealed.public
    # Swapping the sealed key breaks the account signature.
    tagged = encode_key(KEY_HPKE_MLKEM768_X25519, d1.sealed.public)
    other = encode_key(KEY_HPKE_MLKEM768_X25519, DeviceKeys(1, bytes(32), bytes(32)).sealed.public)
    with pytest.raises(ProtocolError):
        verify_device_list(blob.replace(tagged, other), ak.public)
    # A sealed key with the wrong type tag is a decode error, not a key.
    with pytest.raises(DecodeError):
        decode_device_list(blob.replace(tagged, b"\x08" + tagged[1:]))


@pytest.mark.parametrize("text_len", [2, 60, 100, 1500, 5000])
def test_first_messages_and_pq_steps_fill_the_bucket_of_an_ordinary_message(bob_keys, text_len):
    """The relay cannot tell a session's first (prekey) message, or a PQ ratchet step, from
    an ordinary message by its bucket: the bucket depends on the content alone."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from protocol_helpers import SessionPair

    from imsg.protocol import envelope as env
    from imsg.protocol import ratchet as rt
    from imsg.protocol.consts import PQ_STEP_MESSAGES
    from imsg.protocol.content import KIND_TEXT, Content

    pair = SessionPair()
    content = Content("ab" * 16, 1, KIND_TEXT, "alice@example.com", "bob@example.com", "x" * text_len).encode()
    package, content_ct = env.seal_content(content, pair.alice.rng)
    first = pair.send("alice", package)  # a prekey message
    pair.deliver("bob", first)
    announce = pair.send("bob", package)  # Bob's first reply announces his KEM key
    pair.deliver("alice", announce)
    ordinary = pair.send("alice", package)
    pair.deliver("bob", ordinary)
    pair.deliver("alice", pair.send("bob", package))
    record = pair.record("alice")
    record.current.ratchet.pq_count = PQ_STEP_MESSAGES
    step = record.current.encrypt(package, pair.alice.rng)
    assert rt.read_header(step)[4].ct is not None and rt.read_header(ordinary)[4].encode() == b"\x00"
    assert rt.read_header(announce)[4].pk is not None
    sizes = {
        kind: len(sealed.seal_envelope(BOB, bob_keys.public, cert(), message, content_ct))
        for kind, message in (("first", first), ("announce", announce), ("ordinary", ordinary), ("step", step))
    }
    assert len(set(sizes.values())) == 1, sizes
    if text_len == 2:
        assert sizes["ordinary"] == 4096  # a short text: one 4 KiB bucket, whatever its kind
