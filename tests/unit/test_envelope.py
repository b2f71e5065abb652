"""Envelopes, the content layer and message content (imsg.protocol.envelope,
content), and the cross-context matrix.

SECURITY-TESTS rows 1, 6, 10, 15 and R9 (strict content decoding).
"""

from __future__ import annotations

import hashlib
import json

import pytest
from protocol_helpers import SessionPair, flip, seeded_rng

from imsg.crypto import aead, sign
from imsg.crypto.errors import CryptoError
from imsg.crypto.labels import LABEL_CONTENT_AD, LABEL_KEM_PREKEY, LABEL_SENDER_CERTIFICATE, LABEL_SIGNED_PREKEY
from imsg.protocol import envelope as env
from imsg.protocol import sealed
from imsg.protocol import session as sess
from imsg.protocol.consts import PAD_BLOCK
from imsg.protocol.content import KIND_TEXT, Content
from imsg.protocol.encoding import KEY_MLKEM768, KEY_X25519, encode_key
from imsg.protocol.errors import (
    DecodeError,
    DecryptionError,
    DuplicateMessageError,
    ProtocolError,
    UntrustedIdentityError,
)
from imsg.protocol.identity import verify_device_list

MID = "0123456789abcdef0123456789abcdef"


def test_envelope_round_trip():
    pair = SessionPair()
    for i, text in enumerate(["hello", "", "ünïcødé ✓", "x" * 5000]):
        who, to = ("alice", "bob") if i % 2 == 0 else ("bob", "alice")
        mid, blob = pair.send_envelope(who, text)
        content = pair.receive_envelope(to, blob, mid)
        assert (content.message_id, content.text, content.kind) == (mid, text, KIND_TEXT)
        e = env.Envelope.decode(blob)
        assert e.encode() == blob and e.sender == pair.party(who).address


def test_envelope_redelivered_gives_one_content():
    pair = SessionPair()
    mid, blob = pair.send_envelope("alice", "once")
    assert pair.receive_envelope("bob", blob, mid).text == "once"
    before = pair.state("bob")
    with pytest.raises(DuplicateMessageError):
        pair.receive_envelope("bob", blob, mid)
    assert pair.state("bob") == before


def test_content_digest_mismatch_rejected_before_aead(monkeypatch):
    pair = SessionPair()
    mid1, blob1 = pair.send_envelope("alice", "first")
    _, blob2 = pair.send_envelope("alice", "second")
    e1, e2 = env.Envelope.decode(blob1), env.Envelope.decode(blob2)
    swapped = env.Envelope(e1.kind, e1.sender, e1.session_message, e2.content_ciphertext).encode()

    real_open = aead.open_

    def no_content_aead(key, nonce, ciphertext, ad):
        if ad == LABEL_CONTENT_AD:
            raise AssertionError("content AEAD reached before the digest check")
        return real_open(key, nonce, ciphertext, ad)

    monkeypatch.setattr(aead, "open_", no_content_aead)
    before = pair.state("bob")
    with pytest.raises(DecryptionError):
        pair.receive_envelope("bob", swapped)
    assert pair.state("bob") == before
    monkeypatch.undo()
    assert pair.receive_envelope("bob", blob1, mid1).text == "first"


def test_content_key_package_checks():
    package, ct = env.seal_content(b"abc", seeded_rng(1))
    assert env.open_content(package, ct) == b"abc"
    for bad_pkg in (package[:-1], package + b"\x00", b"\x02" + package[1:], flip(package, 5), flip(package, 40)):
        with pytest.raises(DecryptionError):
            env.open_content(bad_pkg, ct)
    for bad_ct in (ct[:-1], ct + b"\x00", flip(ct, 0), b""):
        with pytest.raises(DecryptionError):
            env.open_content(package, bad_ct)


@pytest.mark.parametrize("length", [0, 1, 158, 159, 160, 161, 319, 320, 1000, 60_000])
def test_padded_lengths(length: int):
    package, ct = env.seal_content(b"a" * length, seeded_rng(length))
    assert (len(ct) - aead.TAG_LEN) % PAD_BLOCK == 0
    assert len(ct) - aead.TAG_LEN > length
    assert len(ct) - aead.TAG_LEN <= length + PAD_BLOCK
    assert len(package) == env.KEY_PACKAGE_LEN
    assert package[33:] == hashlib.sha256(ct).digest()


def test_pad_unpad():
    for n in range(0, 400, 7):
        data = bytes([n % 256]) * n
        padded = env.pad(data)
        assert len(padded) % PAD_BLOCK == 0 and env.unpad(padded) == data
    for bad in (b"", bytes(160), b"a" * 160, b"\x80\x01" + bytes(158)):
        with pytest.raises(DecodeError):
            env.unpad(bad)


def test_content_too_large():
    with pytest.raises(ValueError):
        env.seal_content(bytes(env.MAX_CONTENT_LEN), seeded_rng(0))


def test_envelope_decode_errors():
    pair = SessionPair()
    _, blob = pair.send_envelope("alice", "x")
    bad = [
        b"",
        b"\x01",
        b"\x02\x01" + blob[2:],
        b"\x01\x02" + blob[2:],
        b"\x01\x00" + blob[2:],
        blob[:22],
        blob[:26],
        blob[: len(blob) - len(env.Envelope.decode(blob).content_ciphertext)],
        blob[:2] + blob[2:22] + (9000).to_bytes(4, "big") + blob[26:],
    ]
    for b in bad:
        with pytest.raises(DecodeError):
            env.Envelope.decode(b)
    with pytest.raises(ValueError):
        env.Envelope(env.KIND_SEALED, sess.Address("00" * 16, 1), b"", bytes(16)).encode()


def test_bitflip_every_byte_of_an_envelope():
    pair = SessionPair()
    pair.handshake()
    mid, blob = pair.send_envelope("alice", "tamper with me")
    e = env.Envelope.decode(blob)
    content_start = len(blob) - len(e.content_ciphertext)
    session_start = 2 + 16 + 4 + 4
    before = pair.state("bob")
    for pos in range(len(blob)):
        for bit in [0, 7] if pos < content_start else [pos % 8]:
            with pytest.raises((DecodeError, DecryptionError, DuplicateMessageError, UntrustedIdentityError)) as info:
                pair.receive_envelope("bob", flip(blob, pos, bit), mid)
            if pos >= content_start or session_start + 43 <= pos:
                assert info.type is DecryptionError, (pos, bit)
            if 2 <= pos < 22:  # the sender's address: not a device of the pinned list
                assert info.type is UntrustedIdentityError
            assert pair.state("bob") == before, (pos, bit)
    for bad in (blob + b"\x00", blob[:-1]):
        with pytest.raises(DecryptionError):
            pair.receive_envelope("bob", bad, mid)
    assert pair.receive_envelope("bob", blob, mid).text == "tamper with me"


# --- content decoding (R9) ---


def _doc(**over) -> bytes:
    d = {"v": 1, "id": MID, "sent_at": 5, "kind": "text", "from": "a", "to": "b", "text": "hi"}
    d.update(over)
    d = {k: v for k, v in d.items() if v is not _DROP}
    return json.dumps(d).encode()


_DROP = object()


def test_content_round_trip():
    c = Content(MID, 5, KIND_TEXT, "alice", "bob", "héllo")
    assert Content.decode(c.encode()) == c
    assert Content.decode(_doc()).text == "hi"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe",
        b"not json",
        b"[]",
        b"null",
        b"1",
        b'"s"',
        b"{}",
        _doc(v=2),
        _doc(v="1"),
        _doc(v=True),
        _doc(v=1.0),
        _doc(v=_DROP),
        _doc(kind="sync"),
        _doc(kind=None),
        _doc(kind=1),
        _doc(kind=_DROP),
        _doc(id=MID.upper()),
        _doc(id=MID[:-1]),
        _doc(id=MID + "0"),
        _doc(id="g" * 32),
        _doc(id=1),
        _doc(id=_DROP),
        _doc(sent_at=-1),
        _doc(sent_at=True),
        _doc(sent_at=1.5),
        _doc(sent_at="5"),
        _doc(sent_at=1 << 63),
        _doc(**{"from": 1}),
        _doc(to=None),
        _doc(**{"from": "a" * 255}),
        _doc(to=_DROP),
        _doc(text=None),
        _doc(text=["x"]),
        _doc(text="x" * 60_001),
        _doc(text=_DROP),
        b"[" * 100_000 + b"]" * 100_000,
        b'{"v": 1, "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        b'{"v": 1e999999}',
        b'{"v": NaN}',
        b'{"v": 1, "sent_at": 1' + b"0" * 5000 + b"}",
    ],
    ids=lambda d: repr(d[:30]),
)
def test_content_decode_is_strict(data: bytes):
    with pytest.raises(DecodeError):
        Content.decode(data)


# --- cross-context matrix (SECURITY-TESTS 6, 10) ---


def _contexts():
    """A valid output of each context, and each context's decoder/verifier.
    Decoders return normally on success and raise on failure; none commits state."""
    live = SessionPair(seed=3)
    live.handshake()
    ratchet_msg = live.send("alice", b"r" * 65)
    mid, envelope = live.send_envelope("alice", "enveloped")
    package, content_ct = env.seal_content(b"content", seeded_rng(4))
    # Sealed sender (§6e): a relay-signed certificate, and an envelope sealed to bob's device.
    relay_key = sign.SigningKey(bytes(range(32)))
    cert_body = sealed.certificate_body(
        sealed.relay_key_id(relay_key.public), live.alice.address, live.alice.device.identity.public, 2**40
    )
    certificate = cert_body + relay_key.sign(LABEL_SENDER_CERTIFICATE, cert_body)
    _, inner = live.send_envelope("alice", "sealed")
    inner = env.Envelope.decode(inner)
    sealed_envelope = sealed.seal_envelope(
        live.bob.address, live.bob.device.sealed.public, certificate, inner.session_message, inner.content_ciphertext
    )

    fresh = SessionPair(seed=4)
    prekey_msg = fresh.send("alice", b"p" * 65)
    bob = fresh.bob
    bundle = bob.bundle()

    samples = {
        "ratchet": ratchet_msg,
        "prekey": prekey_msg,
        "envelope": envelope,
        "content": package + content_ct,
        "device-list": bob.device_list,
        "signed-prekey": encode_key(KEY_X25519, bundle.signed_prekey) + bundle.signed_prekey_signature,
        "kem-prekey": encode_key(KEY_MLKEM768, bundle.kem_prekey) + bundle.kem_prekey_signature,
        "sealed": sealed_envelope,
        "certificate": certificate,
    }

    def ratchet(blob):
        if sess.message_type(blob) not in (sess.MSG_RATCHET, sess.MSG_RATCHET_PQ):
            raise DecodeError("not a ratchet message")
        live._decrypt(live.bob, live.alice, blob)

    def prekey(blob):
        if sess.message_type(blob) != sess.MSG_PREKEY:
            raise DecodeError("not a prekey message")
        fresh._decrypt(fresh.bob, fresh.alice, blob)

    def envelope_(blob):
        e = env.Envelope.decode(blob)
        if e.sender != live.alice.address:
            raise UntrustedIdentityError()
        r = live._decrypt(live.bob, live.alice, e.session_message)
        Content.decode(env.open_content(r.plaintext, e.content_ciphertext))

    def content(blob):
        env.open_content(blob[: env.KEY_PACKAGE_LEN], blob[env.KEY_PACKAGE_LEN :])

    def device_list(blob):
        verify_device_list(blob, bob.account.public)

    def signed_prekey(blob):
        sign.verify(bob.device.signing.public, LABEL_SIGNED_PREKEY, blob[:-64], blob[-64:])

    def kem_prekey(blob):
        sign.verify(bob.device.signing.public, LABEL_KEM_PREKEY, blob[:-64], blob[-64:])

    def certificate_(blob):
        sealed.SenderCertificate.decode(blob).verify([relay_key.public], 0)

    def sealed_(blob):
        opened = sealed.open_envelope(blob, live.bob.address, live.bob.device.sealed)
        certificate_(opened.certificate.body + opened.certificate.signature)
        if opened.certificate.sender != live.alice.address:
            raise UntrustedIdentityError()
        r = live._decrypt(live.bob, live.alice, opened.session_message)
        Content.decode(env.open_content(r.plaintext, opened.content_ciphertext))

    decoders = {
        "ratchet": ratchet,
        "prekey": prekey,
        "envelope": envelope_,
        "content": content,
        "device-list": device_list,
        "signed-prekey": signed_prekey,
        "kem-prekey": kem_prekey,
        "sealed": sealed_,
        "certificate": certificate_,
    }
    states = lambda: (live.state("bob"), fresh.state("bob"))  # noqa: E731
    return samples, decoders, states


def test_cross_context_matrix_only_the_diagonal_succeeds():
    samples, decoders, states = _contexts()
    before = states()
    results = {}
    for sname, blob in samples.items():
        for dname, decode in decoders.items():
            try:
                decode(blob)
                results[(sname, dname)] = True
            except (ProtocolError, CryptoError):
                results[(sname, dname)] = False
    assert states() == before
    wrong = {k: v for k, v in results.items() if v != (k[0] == k[1])}
    assert wrong == {}
    assert len(results) == 81
