"""R10: a hypothesis state machine over a SessionPair. The relay sends, drops, reorders,
duplicates and forges; clients restart. Invariants: every message decrypts at most once
and, when it does, to what was sent; no sender reuses a (ratchet key, n); the skipped-key
store stays under its cap; a forged message changes nothing.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from protocol_helpers import SessionPair, flip

from imsg.protocol import session as sess
from imsg.protocol.consts import MAX_MESSAGE_KEYS
from imsg.protocol.errors import DecryptionError, DuplicateMessageError, ProtocolError

NAMES = ("alice", "bob")


class RatchetModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.pair = SessionPair(seed=13, one_time=2)
        self.count = 0
        # per recipient: messages the relay holds (message, plaintext)
        self.queue: dict[str, list[tuple[bytes, bytes]]] = {n: [] for n in NAMES}
        # per recipient: everything ever sent to it, and what it has decrypted
        self.sent_to: dict[str, list[tuple[bytes, bytes]]] = {n: [] for n in NAMES}
        self.decrypted: dict[str, set[bytes]] = {n: set() for n in NAMES}

    @staticmethod
    def other(name: str) -> str:
        return "bob" if name == "alice" else "alice"

    @rule(sender=st.sampled_from(NAMES), count=st.integers(1, 3))
    def send(self, sender, count):
        for _ in range(count):
            self.count += 1
            pt = f"{sender} #{self.count}".encode()
            msg = self.pair.send(sender, pt)
            to = self.other(sender)
            self.queue[to].append((msg, pt))
            self.sent_to[to].append((msg, pt))

    def _deliver(self, to: str, msg: bytes, pt: bytes) -> None:
        before = self.pair.state(to)
        try:
            got = self.pair.deliver(to, msg).plaintext
        except (DuplicateMessageError, DecryptionError):
            # only a message already decrypted may be refused
            assert pt in self.decrypted[to], f"first delivery of {pt!r} failed"
            assert self.pair.state(to) == before
            return
        assert got == pt
        assert pt not in self.decrypted[to], f"{pt!r} decrypted twice"
        self.decrypted[to].add(pt)

    @precondition(lambda self: any(self.queue.values()))
    @rule(data=st.data())
    def deliver(self, data):
        to = data.draw(st.sampled_from([n for n in NAMES if self.queue[n]]))
        i = data.draw(st.integers(0, len(self.queue[to]) - 1))  # any position: reorder
        msg, pt = self.queue[to].pop(i)
        self._deliver(to, msg, pt)

    @precondition(lambda self: any(self.queue.values()))
    @rule(data=st.data())
    def drop(self, data):
        to = data.draw(st.sampled_from([n for n in NAMES if self.queue[n]]))
        self.queue[to].pop(data.draw(st.integers(0, len(self.queue[to]) - 1)))

    @precondition(lambda self: any(self.sent_to.values()))
    @rule(data=st.data())
    def duplicate(self, data):
        """The relay re-delivers anything it ever carried (maybe never delivered yet)."""
        to = data.draw(st.sampled_from([n for n in NAMES if self.sent_to[n]]))
        msg, pt = data.draw(st.sampled_from(self.sent_to[to]))
        self._deliver(to, msg, pt)

    @rule(who=st.sampled_from(NAMES))
    def restart(self, who):
        raw = self.pair.raw_record(who)
        if raw is not None:
            again = sess.SessionRecord.decode(raw).encode()
            assert again == raw
            self.pair.party(who).store.save_session(self.pair.peer(self.pair.party(who)).address, again)

    @precondition(lambda self: any(self.sent_to.values()))
    @rule(data=st.data())
    def forge_bitflip(self, data):
        to = data.draw(st.sampled_from([n for n in NAMES if self.sent_to[n]]))
        msg, _ = data.draw(st.sampled_from(self.sent_to[to]))
        # Every byte is authenticated, the prekey prefix included (it is in the AD).
        pos = data.draw(st.integers(0, len(msg) - 1))
        self._forge(to, flip(msg, pos, data.draw(st.integers(0, 7))))

    @rule(
        to=st.sampled_from(NAMES), junk=st.binary(max_size=300), kind=st.sampled_from([b"", b"\x01\x02", b"\x01\x03"])
    )
    def forge_random(self, to, junk, kind):
        self._forge(to, kind + junk)

    def _forge(self, to: str, forged: bytes) -> None:
        before = self.pair.state(to)
        try:
            self.pair.deliver(to, forged)
        except ProtocolError:
            pass
        else:
            raise AssertionError("a forged message was accepted")
        assert self.pair.state(to) == before

    @invariant()
    def no_ratchet_key_and_index_reused(self):
        for name in NAMES:
            log = self.pair.party(name).sent
            assert len(log) == len(set(log))

    @invariant()
    def skipped_store_capped(self):
        for name in NAMES:
            rec = self.pair.record(name)
            if rec is not None:
                for s in [rec.current, *rec.previous]:
                    assert s is None or len(s.ratchet.skipped) <= MAX_MESSAGE_KEYS


TestRatchetModel = RatchetModel.TestCase
_CI = os.environ.get("HYPOTHESIS_PROFILE") == "ci"
TestRatchetModel.settings = settings(
    max_examples=1000 if _CI else 60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
