"""R9: property tests over every decoder of peer (and stored) data. Random bytes and
mutations of valid samples may only ever raise `ProtocolError` subclasses.

`HYPOTHESIS_PROFILE=ci` runs 10,000 examples per decoder; the default profile a few
hundred (see tests/unit/conftest.py).
"""

from __future__ import annotations

import functools

from hypothesis import example, given
from hypothesis import strategies as st
from protocol_helpers import SessionPair

from imsg.protocol import envelope as env
from imsg.protocol import ratchet as rt
from imsg.protocol import session as sess
from imsg.protocol.content import Content
from imsg.protocol.encoding import KEY_ED25519, KEY_MLKEM768, KEY_X25519, Reader, decode_key
from imsg.protocol.errors import ProtocolError
from imsg.protocol.identity import decode_device_list, verify_device_list


@functools.lru_cache(maxsize=1)
def _world():
    """One live pair and valid samples of every structure (built once: the decoders
    under test never commit, so the pair does not change between examples)."""
    pair = SessionPair(seed=21)
    prekey_msg = pair.send("alice", b"k" * 65)
    pair.deliver("bob", pair.send("alice", b"first"))
    pair.deliver("alice", pair.send("bob", b"reply"))
    ratchet_msg = pair.send("alice", b"r" * 65)
    _, envelope = pair.send_envelope("alice", "fuzz me")
    content = Content("ab" * 16, 1, "text", "alice", "bob", "hello").encode()
    return {
        "pair": pair,
        "prekey": prekey_msg,
        "ratchet": ratchet_msg,
        "envelope": envelope,
        "content": content,
        "device_list": pair.alice.device_list,
        "ratchet_state": pair.record("bob").current.ratchet.encode(),
        "record": pair.raw_record("bob"),
        "bob_state": pair.state("bob"),
    }


def _mutated(name: str):
    """A valid sample with a few bytes overwritten, inserted, deleted or truncated."""

    def build(ops):
        data = bytearray(_world()[name])
        for kind, pos, value in ops:
            if not data:
                break
            pos %= len(data)
            if kind == 0:
                data[pos] = value
            elif kind == 1:
                data.insert(pos, value)
            elif kind == 2:
                del data[pos]
            else:
                del data[pos:]
        return bytes(data)

    op = st.tuples(st.integers(0, 3), st.integers(0, 1 << 16), st.integers(0, 255))
    return st.lists(op, min_size=1, max_size=4).map(build)


def _peer_input(name: str):
    return st.one_of(st.binary(max_size=2048), _mutated(name))


def _only_protocol_errors(fn, data):
    try:
        fn(data)
    except ProtocolError:
        pass


# --- decoders ---


@given(_peer_input("envelope"))
@example(b"\x01\x01" + bytes(20) + b"\xff\xff\xff\xff")
def test_envelope_decode(data):
    _only_protocol_errors(env.Envelope.decode, data)


@given(_peer_input("ratchet"))
def test_parse_header(data):
    _only_protocol_errors(rt.parse_header, data)


@given(_peer_input("device_list"))
def test_decode_and_verify_device_list(data):
    _only_protocol_errors(decode_device_list, data)
    _only_protocol_errors(lambda d: verify_device_list(d, _world()["pair"].alice.account.public), data)


@given(st.one_of(st.binary(max_size=512), _mutated("content"), st.text().map(str.encode)))
def test_content_decode(data):
    _only_protocol_errors(Content.decode, data)


@given(_peer_input("ratchet_state"))
def test_ratchet_state_decode(data):
    _only_protocol_errors(rt.RatchetState.decode, data)


@given(st.one_of(st.binary(max_size=4096), _mutated("record")))
def test_session_record_decode(data):
    _only_protocol_errors(sess.SessionRecord.decode, data)


@given(
    st.binary(max_size=256),
    st.lists(
        st.sampled_from(["u8", "u16", "u32", "u64", "var", "opt", "x25519", "ed25519", "mlkem", "raw", "end"]),
        max_size=12,
    ),
)
def test_reader(data, ops):
    def run(d):
        r = Reader(d)
        for op in ops:
            if op == "var":
                r.var(64)
            elif op == "opt":
                r.opt(64)
            elif op == "x25519":
                r.key(KEY_X25519)
            elif op == "ed25519":
                r.key(KEY_ED25519)
            elif op == "mlkem":
                r.key(KEY_MLKEM768)
            elif op == "raw":
                r.raw(3)
            elif op == "end":
                r.end()
            else:
                getattr(r, op)()
        r.rest()

    _only_protocol_errors(run, data)
    for tag in (KEY_X25519, KEY_ED25519, KEY_MLKEM768):
        _only_protocol_errors(lambda d, tag=tag: decode_key(tag, d), data)


# --- decrypting peer messages: only protocol errors, and no state change ---


def _decrypt_at_bob(data):
    w = _world()
    pair = w["pair"]
    try:
        pair._decrypt(pair.bob, pair.alice, data)
    except ProtocolError:
        pass
    assert pair.state("bob") == w["bob_state"]


@given(
    st.one_of(
        st.binary(max_size=1500),
        _mutated("ratchet"),
        _mutated("prekey"),
        st.binary(max_size=200).map(lambda b: b"\x01\x02" + b),
        st.binary(max_size=1400).map(lambda b: b"\x01\x03" + b),
    )
)
def test_session_decrypt_random_and_mutated(data):
    _decrypt_at_bob(data)


@given(_mutated("envelope").filter(lambda d: d != _world()["envelope"]))
def test_receive_envelope_mutated(data):
    w = _world()
    pair = w["pair"]
    try:
        pair.receive_envelope("bob", data)
    except ProtocolError:
        pass
    else:  # only the unmodified envelope may pass; it would have changed the state
        raise AssertionError("a mutated envelope was accepted")
    assert pair.state("bob") == w["bob_state"]
