"""Sessions (imsg.protocol.session) through a SessionPair: prekey messages, records,
replay, reflection, tampering and simultaneous initiation.

SECURITY-TESTS rows 1, 8, 12, 15, 18 and 20.
"""

from __future__ import annotations

import pytest
from protocol_helpers import LOW_ORDER_POINTS, SessionPair, flip

from imsg.crypto import kem
from imsg.protocol import ratchet as rt
from imsg.protocol import session as sess
from imsg.protocol.consts import MAX_PREVIOUS_SESSIONS
from imsg.protocol.encoding import Reader, is_canonical_x25519
from imsg.protocol.errors import (
    DecodeError,
    DecryptionError,
    DuplicateMessageError,
    NoSessionError,
    TooFarAheadError,
    UntrustedIdentityError,
)

_PREFIX = sess._PREKEY_FIXED.size  # version, type, IK, EK, ids
_IK = slice(2, 35)
_EK = slice(35, 68)
_UNIFORM = (DecodeError, DecryptionError, DuplicateMessageError)


def _rejects(pair: SessionPair, to: str, message: bytes, errors=_UNIFORM):
    before = pair.state(to)
    with pytest.raises(errors) as info:
        pair.deliver(to, message)
    assert pair.state(to) == before
    return info.value


# --- set-up ---


def test_first_message_is_a_prekey_message_until_a_reply():
    pair = SessionPair()
    m1 = pair.send("alice", b"one")
    m2 = pair.send("alice", b"two")
    assert sess.message_type(m1) == sess.MSG_PREKEY == sess.message_type(m2)
    # the inner ratchet message is a 0x04 one with no KEM parts (Bob announces first, §5a)
    assert len(m1) == sess._PREKEY_LEN + rt.HEADER_LEN + 1 + 3 + 16
    r = pair.deliver("bob", m1)
    assert r.plaintext == b"one" and r.new_session
    assert sess.message_type(pair.send("bob", b"reply")) == sess.MSG_RATCHET_PQ
    pair.deliver("alice", pair.send("bob", b"reply2"))
    assert sess.message_type(pair.send("alice", b"three")) == sess.MSG_RATCHET_PQ


def test_one_time_prekeys_removed_after_use_and_replay_refused():
    pair = SessionPair()
    bundle = pair.bob.bundle()
    m = pair.send("alice", b"hello")
    r = pair.deliver("bob", m)
    assert r.used_one_time_prekey == bundle.one_time_prekey_id
    assert r.used_kem_prekey == bundle.kem_prekey_id and not bundle.kem_last_resort
    assert pair.bob.store.get_one_time_prekey(bundle.one_time_prekey_id) is None
    assert pair.bob.store.get_kem_prekey(bundle.kem_prekey_id) is None
    # The replayed handshake on a device that lost the session (or to a fresh record)
    # names a used one-time key: refused as a duplicate.
    pair.bob.store.delete_session(pair.alice.address)
    with pytest.raises(DuplicateMessageError):
        pair.deliver("bob", m)


def test_replayed_prekey_message_with_session_is_a_duplicate():
    pair = SessionPair()
    m = pair.send("alice", b"hello")
    assert pair.deliver("bob", m).plaintext == b"hello"
    _rejects(pair, "bob", m, DuplicateMessageError)


def test_last_resort_kem_prekey_is_kept():
    pair = SessionPair(one_time=0)
    bundle = pair.bob.bundle(one_time=False, one_time_kem=False)
    assert bundle.kem_last_resort and bundle.one_time_prekey is None
    pair.start("alice", one_time=False, one_time_kem=False)
    r = pair.deliver("bob", pair.send("alice", b"x"))
    assert r.used_kem_prekey is None and r.used_one_time_prekey is None
    assert pair.bob.store.get_kem_prekey(bundle.kem_prekey_id) is not None


def test_repeat_prekey_message_decrypts_without_a_new_handshake():
    pair = SessionPair()
    m1, m2, m3 = (pair.send("alice", b"%d" % i) for i in range(3))
    assert m1[:_PREFIX] == m2[:_PREFIX]  # same base key: the same session
    assert pair.deliver("bob", m1).new_session
    # The one-time prekey is gone, yet the repeat messages decrypt in the same session,
    # in any order.
    r3 = pair.deliver("bob", m3)
    assert (r3.plaintext, r3.new_session, r3.used_one_time_prekey) == (b"2", False, None)
    r2 = pair.deliver("bob", m2)
    assert (r2.plaintext, r2.new_session) == (b"1", False)
    assert pair.record("bob").previous == []


def test_ratchet_message_without_a_session():
    pair = SessionPair()
    pair.handshake()
    m = pair.send("alice", b"x")
    pair.bob.store.delete_session(pair.alice.address)
    with pytest.raises(NoSessionError):
        pair.deliver("bob", m)


def test_prekey_message_from_another_identity_is_untrusted():
    """The prekey message's identity key must be the one in the sender's signed device
    list (the caller passes it): Mallory's handshake in Alice's name is refused."""
    pair = SessionPair()
    mallory = SessionPair(seed=42).alice
    forged = pair.send("alice", b"x")
    # re-run the handshake as Mallory, addressed from Alice's device
    pair.alice.device, real = mallory.device, pair.alice.device
    pair.alice.store.delete_session(pair.bob.address)
    forged = pair.send("alice", b"I am alice")
    pair.alice.device = real
    _rejects(pair, "bob", forged, UntrustedIdentityError)


def test_unknown_signed_prekey_id_is_refused():
    pair = SessionPair()
    m = bytearray(pair.send("alice", b"x"))
    m[68:72] = (999).to_bytes(4, "big")
    _rejects(pair, "bob", bytes(m), DuplicateMessageError)


# --- non-canonical and low-order keys in the prekey message (SECURITY-TESTS 8) ---


def test_base_key_high_bit_is_not_malleable():
    """X25519 ignores the top bit: if the relay could set it, Bob would accept the
    message under another session id (bug fixed with this test)."""
    pair = SessionPair()
    m = pair.send("alice", b"x")
    _rejects(pair, "bob", flip(m, _EK.stop - 1, 7), DecodeError)
    assert pair.deliver("bob", m).plaintext == b"x"


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda p: p.hex()[:6] + ".." + p.hex()[-4:])
def test_low_order_base_key_in_prekey_message(point: bytes):
    pair = SessionPair()
    m = bytearray(pair.send("alice", b"x"))
    m[_EK.start + 1 : _EK.stop] = point
    expected = DecryptionError if is_canonical_x25519(point) else DecodeError
    _rejects(pair, "bob", bytes(m), expected)


@pytest.mark.parametrize("point", LOW_ORDER_POINTS[:4], ids=lambda p: p.hex()[:6])
def test_low_order_identity_key_in_prekey_message(point: bytes):
    """Even when the (compromised) device list names a low-order identity key, the
    responder's DH1 is all zeros and the handshake fails."""
    pair = SessionPair()
    m = bytearray(pair.send("alice", b"x"))
    m[_IK.start + 1 : _IK.stop] = point
    before = pair.state("bob")
    with pytest.raises(DecryptionError):
        sess.decrypt(
            None,
            bytes(m),
            local=pair.bob.device,
            local_address=pair.bob.address,
            remote_address=pair.alice.address,
            remote_identity_key=point,
            prekeys=pair.bob.store,
            now=pair.now,
        )
    assert pair.state("bob") == before


# --- tampering (SECURITY-TESTS 1, 15, 20) ---


def test_bitflip_every_byte_of_a_prekey_message():
    pair = SessionPair()
    m = pair.send("alice", b"k" * 65)
    before = pair.state("bob")
    seen = set()
    for pos in range(len(m)):
        bits = range(8) if pos < _PREFIX or pos >= _PREFIX + kem.CIPHERTEXT_LEN else [pos % 8]
        for bit in bits:
            bad = flip(m, pos, bit)
            allowed = _UNIFORM + ((UntrustedIdentityError,) if _IK.start < pos < _IK.stop else ())
            if 0 <= pos - sess._PREKEY_LEN < rt.HEADER_LEN:  # inner n made huge
                allowed += (TooFarAheadError,)
            if pos == 1:  # 0x03 -> 0x02 reads as a ratchet message, and Bob has no session
                allowed += (NoSessionError,)
            with pytest.raises(allowed) as info:
                pair.deliver("bob", bad)
            seen.add(info.type)
            inner = pos - sess._PREKEY_LEN
            if pos >= _PREFIX and not 0 <= inner < rt.HEADER_LEN:
                # the KEM ciphertext and the inner ciphertext: only the AEAD can tell
                assert info.type is DecryptionError, (pos, bit)
            elif 0 <= inner < 3:  # inner version, type, key tag
                assert info.type is DecodeError, (pos, bit)
            assert pair.state("bob") == before, (pos, bit)
    assert DecryptionError in seen
    assert pair.deliver("bob", m).plaintext == b"k" * 65


def test_bitflip_every_bit_of_a_ratchet_message():
    pair = SessionPair()
    pair.handshake()
    msgs = [pair.send("alice", b"p" * 65) for _ in range(3)]
    pair.deliver("bob", msgs[2])
    for m in (msgs[0], pair.send("alice", b"q")):
        before = pair.state("bob")
        for pos in range(len(m)):
            for bit in range(8):
                with pytest.raises(_UNIFORM) as info:
                    pair.deliver("bob", flip(m, pos, bit))
                if pos >= rt.HEADER_LEN:
                    assert info.type is DecryptionError
                elif pos >= 2:
                    assert info.type in (DecryptionError, DuplicateMessageError)
                assert pair.state("bob") == before, (pos, bit)
        pair.deliver("bob", m)


def test_forged_ratchet_message_leaves_record_identical():
    pair = SessionPair()
    pair.handshake()
    m = pair.send("alice", b"x" * 40)
    forged = m[:-16] + bytes(16)
    _rejects(pair, "bob", forged, DecryptionError)
    _rejects(pair, "bob", m + b"\x00", DecryptionError)
    _rejects(pair, "bob", m[:-1], DecryptionError)
    assert pair.deliver("bob", m).plaintext == b"x" * 40


def test_forged_prekey_message_leaves_stores_identical():
    """libsignal prekey_message_failed_decryption_does_not_update_stores."""
    pair = SessionPair()
    m = pair.send("alice", b"hi")
    forged = m[:-16] + bytes(16)
    _rejects(pair, "bob", forged, DecryptionError)
    assert pair.bob.store.load_session(pair.alice.address) is None
    assert pair.deliver("bob", m).plaintext == b"hi"


# --- replay and reflection (SECURITY-TESTS 12) ---


@pytest.mark.parametrize("restart", [False, True])
def test_duplicate_ratchet_message_gives_one_plaintext(restart: bool):
    pair = SessionPair()
    pair.handshake()
    msgs = [pair.send("alice", b"%d" % i) for i in range(3)]
    out = []
    for m in [msgs[1], msgs[1], msgs[0], msgs[2], msgs[0], msgs[2], msgs[1]]:
        if restart:  # encode -> decode the stored record, as a new process would
            raw = pair.raw_record("bob")
            again = sess.SessionRecord.decode(raw).encode()
            assert again == raw
            pair.bob.store.save_session(pair.alice.address, again)
        try:
            out.append(pair.deliver("bob", m).plaintext)
        except DuplicateMessageError:
            out.append(None)
    assert out == [b"1", None, b"0", b"2", None, None, None]


def test_reflection_of_own_messages_fails():
    pair = SessionPair()
    own_prekey = pair.send("alice", b"to bob")
    # Alice's own prekey message names her identity key, not Bob's
    _rejects(pair, "alice", own_prekey, UntrustedIdentityError)
    pair.deliver("bob", own_prekey)
    pair.deliver("alice", pair.send("bob", b"reply"))
    own = pair.send("alice", b"to bob again")
    _rejects(pair, "alice", own, DecryptionError)
    bob_own = pair.send("bob", b"to alice")
    _rejects(pair, "bob", bob_own, DecryptionError)


# --- records ---


def test_simultaneous_initiation_converges():
    pair = SessionPair()
    a1 = pair.send("alice", b"alice first")
    b1 = pair.send("bob", b"bob first")
    assert sess.message_type(a1) == sess.MSG_PREKEY == sess.message_type(b1)
    assert pair.deliver("bob", a1).plaintext == b"alice first"
    assert pair.deliver("alice", b1).plaintext == b"bob first"
    for i in range(4):
        assert pair.deliver("bob", pair.send("alice", b"a%d" % i)).plaintext == b"a%d" % i
        assert pair.deliver("alice", pair.send("bob", b"b%d" % i)).plaintext == b"b%d" % i
    ra, rb = pair.record("alice"), pair.record("bob")
    assert ra.current.base_key == rb.current.base_key
    # interleaved sends also work once converged
    x = [pair.send("alice", b"x%d" % i) for i in range(3)]
    y = [pair.send("bob", b"y%d" % i) for i in range(3)]
    for m, pt in zip(reversed(x), [b"x2", b"x1", b"x0"], strict=True):
        assert pair.deliver("bob", m).plaintext == pt
    for m, pt in zip(y, [b"y0", b"y1", b"y2"], strict=True):
        assert pair.deliver("alice", m).plaintext == pt


def test_messages_in_flight_across_a_new_session_still_decrypt():
    pair = SessionPair(one_time=8)
    pair.handshake()
    old = pair.send("alice", b"old session")
    # Alice loses her session and starts a new one; Bob keeps the old as previous
    pair.alice.store.delete_session(pair.bob.address)
    new = pair.send("alice", b"new session")
    assert pair.deliver("bob", new).new_session
    assert pair.deliver("bob", old).plaintext == b"old session"
    rec = pair.record("bob")
    assert len(rec.previous) == 1


def test_previous_sessions_are_capped():
    pair = SessionPair(one_time=MAX_PREVIOUS_SESSIONS + 4)
    for i in range(MAX_PREVIOUS_SESSIONS + 3):
        pair.alice.store.delete_session(pair.bob.address)
        pair.deliver("bob", pair.send("alice", b"%d" % i))
    assert len(pair.record("bob").previous) == MAX_PREVIOUS_SESSIONS


def test_session_record_round_trip():
    pair = SessionPair()
    pair.send("alice", b"pending")
    raw = pair.raw_record("alice")
    rec = sess.SessionRecord.decode(raw)
    assert rec.current.pending is not None and rec.encode() == raw
    pair.deliver("bob", pair.send("alice", b"x"))
    raw_b = pair.raw_record("bob")
    assert sess.SessionRecord.decode(raw_b).encode() == raw_b
    s = rec.current
    again = sess.Session.decode(Reader(s.encode()))
    assert again.encode() == s.encode()
    assert sess.SessionRecord().encode() == bytes([2, 0])  # version 2: PQ ratchet states
    assert sess.SessionRecord.decode(bytes([1, 0])).current is None


def test_session_record_decode_rejects_garbage():
    for data in (b"", b"\x03\x00", b"\x01\x01", b"\x01\x00\x00", b"\x01\x01\x00\x00\x00\x05abcde"):
        with pytest.raises(DecodeError):
            sess.SessionRecord.decode(data)


def test_message_type():
    for data in (b"", b"\x01", b"\x00\x02", b"\x01\x05", b"\x02\x03"):
        with pytest.raises(DecodeError):
            sess.message_type(data)
    assert sess.message_type(b"\x01\x02") == sess.MSG_RATCHET
    assert sess.message_type(b"\x01\x04") == sess.MSG_RATCHET_PQ
    pair = SessionPair()
    with pytest.raises(DecodeError):
        pair.deliver("bob", b"\x01\x03" + bytes(100))  # truncated prekey message


def test_repeat_prekey_message_with_altered_prefix_is_rejected():
    """The prekey prefix is in the inner message's associated data: for a session Bob
    already has, altering any prefix byte of a repeat prekey message is rejected."""
    pair = SessionPair()
    m1, m2 = pair.send("alice", b"one"), pair.send("alice", b"two")
    pair.deliver("bob", m1)
    for position in (70, _PREFIX + 100):  # signed-prekey id; inside the KEM ciphertext
        _rejects(pair, "bob", flip(m2, position))
    assert pair.deliver("bob", m2).plaintext == b"two"


def test_inner_ratchet_message_cannot_be_lifted_out_of_a_prekey_message():
    pair = SessionPair()
    m1, m2 = pair.send("alice", b"one"), pair.send("alice", b"two")
    pair.deliver("bob", m1)
    _rejects(pair, "bob", m2[sess._PREKEY_LEN :])  # the inner ratchet message alone
    assert pair.deliver("bob", m2).plaintext == b"two"
