"""The PQ ratchet (docs/PROTOCOL.md §5a): sparse ML-KEM-768 steps mixed into the root key.

Post-compromise security against an attacker who can break X25519 (a quantum one, modelled
here by handing it every X25519 private key as soon as its public key is on the wire, but
no ML-KEM secret it did not steal), downgrade refusal, loss and reordering around a PQ
step, restarts mid-step, and the upgrade of classical (version 1) states.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from protocol_helpers import T0, flip, ratchet_pair

from imsg.crypto import kem
from imsg.protocol import ratchet as rt
from imsg.protocol.consts import PQ_STEP_MAX_MS, PQ_STEP_MESSAGES
from imsg.protocol.errors import DecodeError, DecryptionError, DowngradeError, ProtocolError


def _copy(state: rt.RatchetState) -> rt.RatchetState:
    return rt.RatchetState.decode(state.encode())


def _parts(message: bytes) -> rt.PqParts | None:
    return rt.read_header(message)[4]


def _is_step(message: bytes) -> bool:
    parts = _parts(message)
    return parts is not None and parts.ct is not None


class QuantumEve:
    """A passive attacker who stole both parties' full states (DH and KEM secrets) at time t
    and breaks every X25519 key she sees afterwards, but no ML-KEM key. She follows the
    conversation with her copies: a message she can decrypt, she reads."""

    def __init__(self, alice: rt.RatchetState, bob: rt.RatchetState):
        self.copies = {"alice": _copy(alice), "bob": _copy(bob)}

    def observe(self, sender: str, receiver_real: rt.RatchetState, message: bytes) -> bytes | None:
        receiver = "bob" if sender == "alice" else "alice"
        mine, theirs = self.copies[receiver], self.copies[sender]
        # X25519 is broken: the receiver's current ratchet private key follows from its public key.
        mine.dhs_private, mine.dhs_public = receiver_real.dhs_private, receiver_real.dhs_public
        dh_pub = rt.parse_header(message)[0]
        try:
            plaintext = mine.decrypt(message, T0)
        except ProtocolError:
            return None
        if theirs.dhs_public != dh_pub:
            # The sender's new chain: its root step is the one `mine` just took. Eve's copy of
            # the sender learns the new root and public ratchet key, but not a KEM seed the
            # sender drew after t (its announced key stays unknown to her).
            theirs.root_key, theirs.dhs_public, theirs.dhs_private = mine.root_key, dh_pub, None
            theirs.dhr, theirs.ckr, theirs.cks = mine.dhs_public, None, None
        return plaintext


def _announced(seed: int = 0):
    """A pair after Alice's first message and Bob's reply, which announces Bob's KEM key:
    Alice's next chain may take a PQ step."""
    alice, bob, rng = ratchet_pair(seed)
    bob.decrypt(alice.encrypt(b"hi", rng), T0)
    reply = bob.encrypt(b"hello", rng)
    alice.decrypt(reply, T0)
    return alice, bob, rng, reply


def _converse(alice, bob, rng, rounds: int, eve: QuantumEve | None = None):
    """Alternate one message each way; yield (round, sender, message, what Eve read)."""
    for i in range(rounds):
        for name, sender, receiver in (("alice", alice, bob), ("bob", bob, alice)):
            m = sender.encrypt(f"{name} {i}".encode(), rng)
            assert receiver.decrypt(m, T0) == f"{name} {i}".encode()
            read = eve.observe(name, receiver, m) if eve else None
            yield i, name, m, read


def test_responder_announces_and_steps_follow_the_schedule():
    alice, bob, rng = ratchet_pair()
    first = alice.encrypt(b"hi", rng)
    assert _parts(first).encode() == b"\x00"  # the initiator's first chain: no KEM parts
    bob.decrypt(first, T0)
    assert bob.peer_pq  # a 0x04 message: from now on Bob refuses 0x02
    reply = bob.encrypt(b"hello", rng)
    parts = _parts(reply)
    assert parts is not None and parts.ct is None and len(parts.pk) == kem.PUBLIC_KEY_LEN
    alice.decrypt(reply, T0)
    assert alice.peer_pq and alice.kem_remote is not None
    steps = [(i, name) for i, name, m, _ in _converse(alice, bob, rng, 3 * PQ_STEP_MESSAGES) if _is_step(m)]
    # each side steps once per PQ_STEP_MESSAGES of its own messages, alternating sides
    assert [name for _, name in steps] == ["alice", "bob"] * (len(steps) // 2) + ["alice"] * (len(steps) % 2)
    assert len(steps) >= 4
    assert all(b[0] - a[0] <= PQ_STEP_MESSAGES for a, b in zip(steps, steps[1:], strict=False))


def test_every_message_of_a_step_chain_repeats_the_parts_and_only_one_step_is_taken():
    alice, bob, rng, _ = _announced()
    alice.pq_count = PQ_STEP_MESSAGES
    chain = [alice.encrypt(f"a{i}".encode(), rng) for i in range(4)]
    assert all(_is_step(m) for m in chain)
    assert len({_parts(m).encode() for m in chain}) == 1
    for i, m in enumerate(chain):
        assert bob.decrypt(m, T0) == f"a{i}".encode()
    assert bob.kem_own is None and bob.kem_remote is not None


def test_stolen_state_heals_after_the_next_pq_step_completes():
    alice, bob, rng = ratchet_pair()
    list(_converse(alice, bob, rng, PQ_STEP_MESSAGES + 3))  # past the first PQ step
    eve = QuantumEve(alice, bob)  # time t: both full states stolen
    fresh_keys: set[int] = set()  # KEM key ids drawn after t (Eve has none of their seeds)
    healed_at = None
    log = []
    for _, name, m, read in _converse(alice, bob, rng, 4 * PQ_STEP_MESSAGES, eve):
        parts = _parts(m)
        if parts is not None and parts.pk is not None:
            fresh_keys.add((name, parts.pk_id))
        if healed_at is None and _is_step(m) and ("bob" if name == "alice" else "alice", parts.ct_key_id) in fresh_keys:
            healed_at = len(log)  # a ciphertext to a KEM key drawn after t: the step completes
        log.append(read)
    assert healed_at is not None
    # Before: a broken-X25519 attacker with the stolen state reads everything.
    assert all(read is not None for read in log[:healed_at])
    # From the completing step on, she reads nothing, and never again.
    assert all(read is None for read in log[healed_at:])
    # In an alternating conversation that takes at most 2 x PQ_STEP_MESSAGES rounds.
    assert healed_at <= 2 * (2 * PQ_STEP_MESSAGES + 1)


def test_without_the_pq_ratchet_the_same_attacker_reads_forever():
    """The control: classical sessions give no healing against broken X25519."""
    alice, bob, rng = ratchet_pair(pq=False)
    list(_converse(alice, bob, rng, 3))
    eve = QuantumEve(alice, bob)
    assert all(read is not None for *_, read in _converse(alice, bob, rng, 3 * PQ_STEP_MESSAGES, eve))


# --- no silent downgrade ---


def test_a_valid_classical_message_is_refused_once_the_peer_used_the_pq_ratchet():
    alice, bob, rng = ratchet_pair()
    bob.decrypt(alice.encrypt(b"pq", rng), T0)
    # A copy of Alice that sends classical 0x02 messages: genuinely keyed, AEAD-valid.
    classical = _copy(alice)
    classical.pq = False
    m = classical.encrypt(b"downgraded", rng)
    assert m[1] == rt.MSG_RATCHET
    before = bob.encode()
    with pytest.raises(DowngradeError):
        bob.decrypt(m, T0)
    assert bob.encode() == before
    # and on a new chain as well
    alice.decrypt(bob.encrypt(b"reply", rng), T0)
    classical = _copy(alice)
    classical.pq = False
    with pytest.raises(DowngradeError):
        bob.decrypt(classical.encrypt(b"downgraded", rng), T0)


def _step(alice, rng, text=b"step"):
    alice.pq_count = PQ_STEP_MESSAGES
    step = alice.encrypt(text, rng)
    assert _is_step(step)
    return step


def test_stripping_the_pq_parts_is_refused():
    alice, bob, rng, _ = _announced()
    step = _step(alice, rng)
    h, body = rt.HEADER_LEN, step[rt.HEADER_LEN + 1 + 4 + kem.CIPHERTEXT_LEN + 4 + kem.PUBLIC_KEY_LEN :]
    stripped = [
        step[:h] + b"\x00" + body,  # flags cleared, parts removed
        step[:h] + b"\x02" + step[h + 1 + 4 + kem.CIPHERTEXT_LEN :],  # ciphertext removed
        step[:h] + b"\x01" + step[h + 1 : h + 1 + 4 + kem.CIPHERTEXT_LEN] + body,  # new key removed
        step[:1] + bytes([rt.MSG_RATCHET]) + step[2:h] + body,  # rewritten as classical
    ]
    before = bob.encode()
    for forged in stripped:
        with pytest.raises(DecryptionError):
            bob.decrypt(forged, T0)
        assert bob.encode() == before
    assert bob.decrypt(step, T0) == b"step"


def test_ciphertext_to_a_key_we_do_not_hold_is_refused():
    alice, bob, rng, _ = _announced()
    step = _step(alice, rng)
    wrong_id = bytearray(step)
    wrong_id[rt.HEADER_LEN + 4] ^= 1  # the recipient key id
    with pytest.raises(DecryptionError):
        bob.decrypt(bytes(wrong_id), T0)
    # a flipped ciphertext bit: implicit rejection, then the AEAD fails
    with pytest.raises(DecryptionError):
        bob.decrypt(flip(step, rt.HEADER_LEN + 1 + 4 + 100), T0)
    assert bob.decrypt(step, T0) == b"step"


def test_a_malformed_announced_key_is_refused():
    alice, bob, rng = ratchet_pair()
    bob.decrypt(alice.encrypt(b"hi", rng), T0)
    reply = bytearray(bob.encrypt(b"hello", rng))
    at = rt.HEADER_LEN + 1 + 4
    reply[at : at + kem.PUBLIC_KEY_LEN] = b"\xff" * kem.PUBLIC_KEY_LEN  # coefficients >= q
    with pytest.raises(DecryptionError):
        alice.decrypt(bytes(reply), T0)
    assert alice.kem_remote is None


# --- loss, reordering and restarts around a PQ step ---


def test_out_of_order_and_lost_messages_around_a_pq_step():
    alice, bob, rng, _ = _announced()
    tail_b = [bob.encrypt(f"late {i}".encode(), rng) for i in range(3)]  # Bob's chain, delayed
    alice.pq_count = PQ_STEP_MESSAGES
    chain = [alice.encrypt(f"a{i}".encode(), rng) for i in range(5)]
    assert bob.decrypt(chain[3], T0) == b"a3"  # the step arrives out of order, 0..2 missing
    assert bob.decrypt(chain[1], T0) == b"a1"
    assert bob.decrypt(chain[0], T0) == b"a0"  # chain[2] and chain[4] are lost
    # Bob's PQ step answers (after his count) while Alice still waits for his old chain
    bob.pq_count = PQ_STEP_MESSAGES
    answer = [bob.encrypt(f"b{i}".encode(), rng) for i in range(2)]
    assert all(_is_step(m) for m in answer)
    assert alice.decrypt(answer[1], T0) == b"b1"
    for i in (2, 0, 1):
        assert alice.decrypt(tail_b[i], T0) == f"late {i}".encode()  # skipped keys of the old chain
    assert alice.decrypt(answer[0], T0) == b"b0"
    list(_converse(alice, bob, rng, 3))


def test_both_sides_restart_mid_step():
    alice, bob, rng, _ = _announced()
    first = _step(alice, rng, b"a0")
    alice = _copy(alice)  # restart after sending the step, before Bob has it
    second = alice.encrypt(b"a1", rng)  # the restarted Alice repeats the same parts
    assert _parts(first).encode() == _parts(second).encode()
    bob = _copy(bob)  # restart before receiving it
    assert bob.decrypt(second, T0) == b"a1"
    bob = _copy(bob)  # and again after, with one message of the step chain pending
    assert bob.decrypt(first, T0) == b"a0"
    list(_converse(_copy(alice), _copy(bob), rng, 2 * PQ_STEP_MESSAGES))


def test_the_time_trigger_steps_on_the_next_chain():
    alice, bob, rng = ratchet_pair()
    bob.decrypt(alice.encrypt(b"hi", rng, now=T0), T0)
    alice.decrypt(bob.encrypt(b"announce", rng, now=T0), T0)
    assert not _is_step(alice.encrypt(b"soon", rng, now=T0))  # count and time both short
    bob.decrypt(alice.encrypt(b"x", rng, now=T0), T0)
    alice.decrypt(bob.encrypt(b"y", rng, now=T0), T0)
    assert _is_step(alice.encrypt(b"a day later", rng, now=alice.pq_last + PQ_STEP_MAX_MS))


# --- classical states from before the PQ ratchet ---


def _as_version_1(state: rt.RatchetState) -> bytes:
    """The version 1 encoding: the version 2 one without its PQ trailer."""
    v2 = state.encode()
    trailer = 1 + 1 + 1 + 4 + 4 + 1 + 4 + 8  # flags, no own, no remote, next id, var(b"\0"), count, last
    assert not state.kem_own and not state.kem_remote and state.pq_send == b"\x00"
    return b"\x01" + v2[1:-trailer]


def test_a_classical_session_upgrades_itself():
    alice, bob, rng = ratchet_pair(pq=False)
    list(_converse(alice, bob, rng, 3))
    late = alice.encrypt(b"in flight before the upgrade", rng)  # a 0x02 message
    alice, bob = rt.RatchetState.decode(_as_version_1(alice)), rt.RatchetState.decode(_as_version_1(bob))
    assert alice.pq and not alice.peer_pq and bob.encode()[0] == 2
    assert bob.decrypt(late, T0) == b"in flight before the upgrade"  # 0x02 still accepted
    steps = [m for *_, m, _ in _converse(alice, bob, rng, 2 * PQ_STEP_MESSAGES + 2) if _is_step(m)]
    assert steps and alice.peer_pq and bob.peer_pq
    classical = _copy(alice)
    classical.pq = False
    with pytest.raises(DowngradeError):
        bob.decrypt(classical.encrypt(b"old again", rng), T0)


def test_state_decode_rejects_bad_versions_and_trailers():
    alice, _, rng = ratchet_pair()
    alice.encrypt(b"hi", rng)
    raw = alice.encode()
    for bad in (b"\x03" + raw[1:], raw + b"\x00", raw[:-1]):
        with pytest.raises(DecodeError):
            rt.RatchetState.decode(bad)
    assert rt.RatchetState.decode(raw).encode() == raw


# --- property: any interleaving of sends, losses, reorderings, restarts and PQ steps ---

_OPS = st.lists(
    st.tuples(
        st.sampled_from(["send", "deliver", "drop", "restart", "due"]),
        st.sampled_from(["alice", "bob"]),
        st.integers(0, 7),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(_OPS)
def test_every_message_not_lost_decrypts_once_whatever_the_order(ops):
    """Messages are sent, delivered in any order, lost, and either side restarts (state
    encode/decode) or is made due for a PQ step at any point: every message delivered
    decrypts to its own plaintext, once; a second delivery is a duplicate."""
    alice, bob, rng = ratchet_pair()
    states = {"alice": alice, "bob": bob}
    other = {"alice": "bob", "bob": "alice"}
    in_flight: dict[str, list[tuple[bytes, bytes]]] = {"alice": [], "bob": []}  # to -> (message, text)
    # Bob cannot send before Alice's first message arrives: start the session.
    first = alice.encrypt(b"start", rng)
    assert bob.decrypt(first, T0) == b"start"
    delivered = []
    for n, (op, who, k) in enumerate(ops):
        me = states[who]
        if op == "send":
            text = f"{who} {n}".encode()
            in_flight[other[who]].append((me.encrypt(text, rng), text))
        elif op in ("deliver", "drop") and in_flight[who]:
            message, text = in_flight[who].pop(k % len(in_flight[who]))
            if op == "deliver":
                assert me.decrypt(message, T0) == text
                delivered.append((who, message))
        elif op == "restart":
            states[who] = _copy(me)
        elif op == "due":
            me.pq_count = PQ_STEP_MESSAGES
    for who, message in delivered[-3:]:
        with pytest.raises(ProtocolError):
            states[who].decrypt(message, T0)
    # whatever happened, the two can still talk both ways
    list(_converse(states["alice"], states["bob"], rng, 2))
