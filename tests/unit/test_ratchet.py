"""The Double Ratchet on its own (imsg.protocol.ratchet): ordering, skipped keys and
their limits, replay, tampering and low-order keys.

SECURITY-TESTS rows 1, 11, 12, 15, 19, 20 and 8 (ratchet keys).
"""

from __future__ import annotations

import random

import pytest
from protocol_helpers import LOW_ORDER_POINTS, T0, flip, ratchet_pair

from imsg.protocol import ratchet as rt
from imsg.protocol.consts import MAX_FORWARD_JUMPS, MAX_MESSAGE_KEYS, MAX_SKIPPED_KEY_AGE_MS
from imsg.protocol.errors import (
    DecodeError,
    DecryptionError,
    DuplicateMessageError,
    LocalProtocolError,
    TooFarAheadError,
)


def _pt(i: int) -> bytes:
    return f"message {i}".encode()


def _send(state: rt.RatchetState, rng, count: int, start: int = 0) -> list[bytes]:
    return [state.encrypt(_pt(start + i), rng) for i in range(count)]


def _rejects_unchanged(state: rt.RatchetState, message: bytes, errors, now: int = T0):
    before = state.encode()
    with pytest.raises(errors) as info:
        state.decrypt(message, now)
    assert state.encode() == before
    return info.value


# --- ordering ---


def test_in_order():
    alice, bob, rng = ratchet_pair()
    for i, m in enumerate(_send(alice, rng, 20)):
        assert bob.decrypt(m, T0) == _pt(i)
    assert bob.skipped == {}


def test_responder_cannot_send_first():
    _, bob, rng = ratchet_pair()
    with pytest.raises(LocalProtocolError):
        bob.encrypt(b"x", rng)


def test_out_of_order_within_a_chain():
    alice, bob, rng = ratchet_pair()
    msgs = _send(alice, rng, 30)
    order = list(range(30))
    random.Random(7).shuffle(order)
    for i in order:
        assert bob.decrypt(msgs[i], T0) == _pt(i)
    assert bob.skipped == {}


def test_alternating_directions():
    alice, bob, rng = ratchet_pair()
    for i in range(25):
        assert bob.decrypt(alice.encrypt(_pt(i), rng), T0) == _pt(i)
        assert alice.decrypt(bob.encrypt(_pt(-i), rng), T0) == _pt(-i)
    # each turn was a DH ratchet step: the ratchet keys differ every time
    assert alice.dhs_public != bob.dhs_public


def test_out_of_order_across_dh_steps_with_pn_gaps():
    """Chain A1 (5 msgs, only #0 delivered), reply, chain A2 (4 msgs, only #3 delivered
    first): Bob must store the A1 gap from PN and the A2 gap from N, then take every
    late message in any order (SECURITY-TESTS 11)."""
    alice, bob, rng = ratchet_pair()
    a1 = _send(alice, rng, 5, 0)
    assert bob.decrypt(a1[0], T0) == _pt(0)
    assert alice.decrypt(bob.encrypt(b"r1", rng), T0) == b"r1"
    a2 = _send(alice, rng, 4, 100)
    pub2, pn, n = rt.parse_header(a2[3])
    assert (pn, n) == (5, 3)
    assert bob.decrypt(a2[3], T0) == _pt(103)
    assert len(bob.skipped) == 4 + 3  # a1[1..4] from PN, a2[0..2] from N
    late = [(a1, 1, 0), (a2, 0, 100), (a1, 4, 0), (a2, 2, 100), (a1, 2, 0), (a2, 1, 100), (a1, 3, 0)]
    for chain, i, base in late:
        assert bob.decrypt(chain[i], T0) == _pt(base + i)
    assert bob.skipped == {}
    # and after another round trip, still in sync
    assert alice.decrypt(bob.encrypt(b"r2", rng), T0) == b"r2"
    assert bob.decrypt(alice.encrypt(b"a3", rng), T0) == b"a3"


def test_permuted_and_dropped_100_messages():
    """The relay permutes and drops: each delivered message decrypts once, at its own
    authenticated (chain, n) position (SECURITY-TESTS 11)."""
    alice, bob, rng = ratchet_pair()
    shuffle = random.Random(11)
    sent: list[tuple[bytes, bytes]] = []
    for round_ in range(10):
        for i in range(10):
            sent.append((alice.encrypt(_pt(round_ * 10 + i), rng), _pt(round_ * 10 + i)))
        if round_ == 0:  # Bob needs one message before he can reply
            assert bob.decrypt(sent[0][0], T0) == sent[0][1]
            sent[0] = (sent[0][0], None)
        assert alice.decrypt(bob.encrypt(b"ack", rng), T0) == b"ack"
    delivered = [s for s in sent if s[1] is not None and shuffle.random() > 0.2]
    shuffle.shuffle(delivered)
    for msg, pt in delivered:
        assert bob.decrypt(msg, T0) == pt
        before = bob.encode()
        # A replay in the current receiving chain is named a duplicate. A replay of an
        # older chain's message (its key no longer the receiving key, its skipped key
        # used) looks like a new ratchet key and fails the AEAD instead: still exactly
        # one plaintext, but a DecryptionError (libsignal keeps old receiver chains and
        # says DuplicateMessage; see the report).
        expected = (
            DuplicateMessageError if rt.parse_header(msg)[0] == bob.dhr else (DuplicateMessageError, DecryptionError)
        )
        with pytest.raises(expected):
            bob.decrypt(msg, T0)
        assert bob.encode() == before


# --- limits (SECURITY-TESTS 19) ---


def test_skip_limit_boundary_accepted():
    alice, bob, rng = ratchet_pair()
    msgs = _send(alice, rng, MAX_FORWARD_JUMPS + 1)
    assert bob.decrypt(msgs[MAX_FORWARD_JUMPS], T0) == _pt(MAX_FORWARD_JUMPS)
    assert len(bob.skipped) == MAX_FORWARD_JUMPS


def _count_chain_work(monkeypatch) -> list[int]:
    """Count chain-key derivations (rt._skip and rt._advance): a message refused on its face
    must cost none. (Counting work, not timing it: a loaded machine makes any clock flaky.)"""
    calls = [0]
    for name in ("_skip", "_advance"):
        real = getattr(rt, name)

        def counted(*args, _real=real, **kwargs):
            calls[0] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(rt, name, counted)
    return calls


def test_too_far_ahead_new_chain_rejected_fast_and_unchanged(monkeypatch):
    alice, bob, rng = ratchet_pair()
    msgs = _send(alice, rng, MAX_FORWARD_JUMPS + 2)
    before = bob.encode()
    work = _count_chain_work(monkeypatch)
    with pytest.raises(TooFarAheadError):
        bob.decrypt(msgs[MAX_FORWARD_JUMPS + 1], T0)
    assert work == [0]
    monkeypatch.undo()
    assert bob.encode() == before
    assert bob.decrypt(msgs[0], T0) == _pt(0)


def test_too_far_ahead_same_chain_rejected_fast_and_unchanged(monkeypatch):
    alice, bob, rng = ratchet_pair()
    msgs = _send(alice, rng, MAX_FORWARD_JUMPS + 3)
    assert bob.decrypt(msgs[0], T0) == _pt(0)
    before = bob.encode()
    work = _count_chain_work(monkeypatch)
    with pytest.raises(TooFarAheadError):
        bob.decrypt(msgs[MAX_FORWARD_JUMPS + 2], T0)  # n - nr = MAX + 1
    assert work == [0]
    monkeypatch.undo()
    assert bob.encode() == before
    assert bob.decrypt(msgs[MAX_FORWARD_JUMPS + 1], T0) == _pt(MAX_FORWARD_JUMPS + 1)


def test_forged_huge_n_rejected_before_any_kdf_work(monkeypatch):
    """A forged header with n = 2^32-1 (garbage body) is refused on its face."""
    alice, bob, rng = ratchet_pair()
    first = alice.encrypt(b"a", rng)
    bob.decrypt(first, T0)
    pub = first[3:35]
    for n in (MAX_FORWARD_JUMPS + 2, 2**32 - 1):
        forged = rt._HEADER.pack(1, rt.MSG_RATCHET_PQ, 0x05, pub, 0, n) + b"\x00" + bytes(32)
        work = _count_chain_work(monkeypatch)
        _rejects_unchanged(bob, forged, TooFarAheadError)
        assert work == [0]
        monkeypatch.undo()


def test_too_far_ahead_previous_chain_via_pn():
    """A new ratchet key whose PN claims the previous chain ran > MAX ahead is refused."""
    alice, bob, rng = ratchet_pair()
    a1 = _send(alice, rng, MAX_FORWARD_JUMPS + 3)
    bob.decrypt(a1[0], T0)
    alice.decrypt(bob.encrypt(b"r", rng), T0)
    a2 = alice.encrypt(b"next chain", rng)
    assert rt.parse_header(a2)[1] == MAX_FORWARD_JUMPS + 3
    _rejects_unchanged(bob, a2, TooFarAheadError)


def test_skipped_store_capped_after_100_ratchets_with_50_gaps():
    alice, bob, rng = ratchet_pair()
    last_round: list[tuple[bytes, bytes]] = []
    first_round: list[bytes] = []
    for r in range(100):
        msgs = _send(alice, rng, 51, r * 1000)
        assert bob.decrypt(msgs[-1], T0 + r) == _pt(r * 1000 + 50)
        assert len(bob.skipped) <= MAX_MESSAGE_KEYS
        assert alice.decrypt(bob.encrypt(b"ack", rng), T0 + r) == b"ack"
        if r == 0:
            first_round = msgs[:50]
        last_round = [(m, _pt(r * 1000 + i)) for i, m in enumerate(msgs[:50])]
    assert len(bob.skipped) == MAX_MESSAGE_KEYS
    assert len(rt.RatchetState.decode(bob.encode()).skipped) == MAX_MESSAGE_KEYS
    # oldest evicted first: the first round's keys are gone, the last round's still work
    before = bob.encode()
    with pytest.raises((DuplicateMessageError, DecryptionError)):
        bob.decrypt(first_round[0], T0 + 200)
    assert bob.encode() == before
    for m, pt in last_round:
        assert bob.decrypt(m, T0 + 200) == pt


def test_skipped_keys_expire():
    alice, bob, rng = ratchet_pair()
    msgs = _send(alice, rng, 4)
    bob.decrypt(msgs[3], T0)
    assert len(bob.skipped) == 3
    # exactly at the limit still fine
    assert bob.decrypt(msgs[0], T0 + MAX_SKIPPED_KEY_AGE_MS) == _pt(0)
    # one ms later the key is expired: refused, state unchanged
    _rejects_unchanged(bob, msgs[1], DuplicateMessageError, now=T0 + MAX_SKIPPED_KEY_AGE_MS + 1)
    # the next time keys are stored, expired ones are purged
    more = _send(alice, rng, 3, 4)
    later = T0 + MAX_SKIPPED_KEY_AGE_MS + 10
    assert bob.decrypt(more[2], later) == _pt(6)
    assert set(n for _, n in bob.skipped) == {4, 5}
    with pytest.raises(DuplicateMessageError):
        bob.decrypt(msgs[2], later)


# --- replay and reflection (SECURITY-TESTS 12) ---


@pytest.mark.parametrize("restart", [False, True])
def test_duplicate_gives_one_plaintext(restart: bool):
    alice, bob, rng = ratchet_pair()
    msgs = _send(alice, rng, 3)
    results = []
    for m in [msgs[2], msgs[0], msgs[2], msgs[0], msgs[1], msgs[1], msgs[2]]:
        if restart:
            bob = rt.RatchetState.decode(bob.encode())
        try:
            results.append(bob.decrypt(m, T0))
        except DuplicateMessageError:
            results.append(None)
    assert results == [_pt(2), _pt(0), None, None, _pt(1), None, None]


def test_replay_of_previous_chain_after_dh_step_is_rejected():
    """After a DH step the old chain's key is no longer the receiving key; a replay of
    one of its messages must still be refused, with state unchanged."""
    alice, bob, rng = ratchet_pair()
    a1 = alice.encrypt(b"one", rng)
    bob.decrypt(a1, T0)
    alice.decrypt(bob.encrypt(b"r", rng), T0)
    bob.decrypt(alice.encrypt(b"two", rng), T0)
    _rejects_unchanged(bob, a1, (DuplicateMessageError, DecryptionError))


def test_reflection_fails():
    alice, bob, rng = ratchet_pair()
    own = alice.encrypt(b"to bob", rng)
    _rejects_unchanged(alice, own, DecryptionError)
    bob.decrypt(own, T0)
    reply = bob.encrypt(b"to alice", rng)
    _rejects_unchanged(bob, reply, DecryptionError)
    alice.decrypt(reply, T0)
    own2 = alice.encrypt(b"again", rng)
    _rejects_unchanged(alice, own2, DecryptionError)


def test_direction_bound_ad():
    """Swapping the AD direction (a message re-labelled as going the other way) fails."""
    alice, bob, rng = ratchet_pair()
    m = alice.encrypt(b"x", rng)
    bob.ad_recv, bob.ad_send = bob.ad_send, bob.ad_recv
    _rejects_unchanged(bob, m, DecryptionError)


# --- tampering (SECURITY-TESTS 1, 15, 20) ---

_HEADER_ERRORS = (DecodeError, DecryptionError, DuplicateMessageError, TooFarAheadError)


def _bitflip_all(state: rt.RatchetState, message: bytes):
    before = state.encode()
    for pos in range(len(message)):
        for bit in range(8):
            with pytest.raises(_HEADER_ERRORS) as info:
                state.decrypt(flip(message, pos, bit), T0)
            if pos >= 3:  # everything after version/type/tag is covered by the AEAD
                # n flipped far ahead is refused before the AEAD; the rest fail it
                assert info.type in (DecryptionError, TooFarAheadError) or (
                    info.type is DuplicateMessageError and rt.HEADER_LEN - 4 <= pos < rt.HEADER_LEN
                ), (pos, bit, info.type)
                if pos >= rt.HEADER_LEN:
                    assert info.type is DecryptionError
            else:
                assert info.type is DecodeError
            assert state.encode() == before, (pos, bit)


def test_bitflip_every_bit_first_message_of_chain():
    alice, bob, rng = ratchet_pair()
    m = alice.encrypt(b"secret" * 10, rng)
    _bitflip_all(bob, m)
    assert bob.decrypt(m, T0) == b"secret" * 10


def test_bitflip_every_bit_in_chain_message():
    alice, bob, rng = ratchet_pair()
    msgs = _send(alice, rng, 4)
    bob.decrypt(msgs[0], T0)
    bob.decrypt(msgs[3], T0)  # leaves skipped keys for 1, 2
    _bitflip_all(bob, msgs[1])
    assert bob.decrypt(msgs[1], T0) == _pt(1)


def test_append_or_truncate_one_byte_rejected():
    alice, bob, rng = ratchet_pair()
    m = alice.encrypt(b"abc", rng)
    for bad in (m + b"\x00", m[:-1], m[: rt.HEADER_LEN + 16 - 1], m[: rt.HEADER_LEN]):
        _rejects_unchanged(bob, bad, (DecryptionError, DecodeError))
    assert bob.decrypt(m, T0) == b"abc"


def test_forged_header_wrong_tag_leaves_state_identical():
    alice, bob, rng = ratchet_pair()
    msgs = _send(alice, rng, 3)
    bob.decrypt(msgs[0], T0)
    prng = random.Random(3)
    forgeries = [
        msgs[2][:-16] + prng.randbytes(16),  # right header, wrong tag (skips keys)
        msgs[1][: rt.HEADER_LEN] + prng.randbytes(len(msgs[1]) - rt.HEADER_LEN),
        # a fresh ratchet key (valid point) with PN and N gaps
        rt._HEADER.pack(1, rt.MSG_RATCHET_PQ, 0x05, alice.dhs_public[::-1], 7, 9) + b"\x00" + prng.randbytes(40),
        rt._HEADER.pack(1, rt.MSG_RATCHET_PQ, 0x05, prng.randbytes(32), 1, 1) + b"\x00" + prng.randbytes(40),
    ]
    for forged in forgeries:
        _rejects_unchanged(bob, forged, DecryptionError)
    assert bob.decrypt(msgs[2], T0) == _pt(2)
    assert bob.decrypt(msgs[1], T0) == _pt(1)


# --- low-order ratchet keys (SECURITY-TESTS 8) ---


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda p: p.hex()[:8] + ".." + p.hex()[-4:])
def test_low_order_ratchet_key_rejected(point: bytes):
    alice, bob, rng = ratchet_pair()
    bob.decrypt(alice.encrypt(b"a", rng), T0)
    forged = rt._HEADER.pack(1, rt.MSG_RATCHET, 0x05, point, 1, 0) + bytes(32)
    _rejects_unchanged(bob, forged, DecryptionError)


# --- persistence ---


def test_encode_decode_round_trip_mid_conversation():
    alice, bob, rng = ratchet_pair()
    msgs = _send(alice, rng, 5)
    bob.decrypt(msgs[4], T0)
    for s in (alice, bob):
        again = rt.RatchetState.decode(s.encode())
        assert again.encode() == s.encode()
    bob = rt.RatchetState.decode(bob.encode())
    alice = rt.RatchetState.decode(alice.encode())
    assert bob.decrypt(msgs[1], T0) == _pt(1)
    assert alice.decrypt(bob.encrypt(b"r", rng), T0) == b"r"


def test_parse_header_rejects_wrong_version_type_tag():
    alice, _, rng = ratchet_pair()
    m = alice.encrypt(b"x", rng)
    assert rt.parse_header(m)[2] == 0
    for pos, value in ((0, 2), (1, 3), (2, 0x08)):
        bad = bytearray(m)
        bad[pos] = value
        with pytest.raises(DecodeError):
            rt.parse_header(bytes(bad))
    with pytest.raises(DecodeError):
        rt.parse_header(m[: rt.HEADER_LEN + 15])
