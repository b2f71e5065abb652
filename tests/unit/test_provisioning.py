"""Pairing codes and provisioning boxes (imsg/protocol/provisioning.py): the only
protection of a device link against the relay that carries it."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imsg.protocol import provisioning as prov
from imsg.protocol.errors import DecodeError, DecryptionError, ProtocolError

CH, SECRET = bytes(range(8)), bytes(range(100, 110))
DOC = {"v": 1, "identity_key": "AAAA", "name": "laptop ✓", "n": [1, 2, 3]}


# --- pairing codes ---


def test_code_round_trip_and_shape():
    for _ in range(50):
        ch, secret = os.urandom(8), os.urandom(10)
        code = prov.make_code(ch, secret)
        assert prov.parse_code(code) == (ch, secret)
        groups = code.split("-")
        assert [len(g) for g in groups] == [5, 5, 5, 5, 5, 4]
        assert all(c in prov._ALPHABET for c in code.replace("-", ""))
    assert prov.parse_code(prov.make_code(bytes(8), bytes(10))) == (bytes(8), bytes(10))
    assert prov.parse_code(prov.make_code(b"\xff" * 8, b"\xff" * 10)) == (b"\xff" * 8, b"\xff" * 10)


@pytest.mark.parametrize(
    "variant",
    [
        lambda c: c.upper(),
        lambda c: c.replace("-", ""),
        lambda c: c.replace("-", " "),
        lambda c: "  " + c.replace("-", " - ") + "\t",
        lambda c: "-".join(c.replace("-", "")),
        lambda c: c.replace("-", "").upper()[:10] + "\t" + c.replace("-", "")[10:],
    ],
)
def test_code_tolerates_case_spaces_and_dashes(variant):
    code = prov.make_code(CH, SECRET)
    assert prov.parse_code(variant(code)) == (CH, SECRET)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "-",
        "abc",
        "a" * 28,
        "a" * 30,
        "0" * 29,  # 0 is not in the alphabet
        "o" * 29,
        "l" * 29,
        "1" * 29,
        "aaaaa-aaaaa-aaaaa-aaaaa-aaaaa-aaa!",
        "z" * 29,  # 145 bits: above 2^144
        "é" * 29,
        "\x00" * 29,
        "aaaaa_aaaaa_aaaaa_aaaaa_aaaaa_aaaa",
    ],
)
def test_malformed_codes_are_decode_errors(bad):
    with pytest.raises(DecodeError):
        prov.parse_code(bad)


def test_code_of_the_wrong_sizes_is_refused_at_creation():
    with pytest.raises(ValueError):
        prov.make_code(bytes(7), bytes(10))
    with pytest.raises(ValueError):
        prov.make_code(bytes(8), bytes(11))


# --- boxes ---


def test_box_round_trip_both_directions_and_indexes():
    for direction in (prov.TO_EXISTING, prov.TO_NEW):
        for index in (0, 1, 7):
            box = prov.seal_box(SECRET, CH, direction, index, DOC)
            assert prov.open_box(SECRET, CH, direction, index, box) == DOC


def test_box_is_ciphertext():
    box = prov.seal_box(SECRET, CH, prov.TO_NEW, 0, {"v": 1, "account_private": "SECRETSECRET"})
    assert b"SECRETSECRET" not in box and b"account_private" not in box


@pytest.mark.parametrize("change", ["secret", "channel", "direction", "index"])
def test_wrong_secret_channel_direction_or_index_fails(change):
    box = prov.seal_box(SECRET, CH, prov.TO_EXISTING, 0, DOC)
    args = {"secret": SECRET, "channel": CH, "direction": prov.TO_EXISTING, "index": 0}
    args[change] = {
        "secret": SECRET[:-1] + b"\x00",
        "channel": CH[:-1] + b"\xff",
        "direction": prov.TO_NEW,
        "index": 1,
    }[change]
    with pytest.raises(DecryptionError):
        prov.open_box(args["secret"], args["channel"], args["direction"], args["index"], box)


def test_every_single_byte_tamper_fails():
    box = prov.seal_box(SECRET, CH, prov.TO_NEW, 0, DOC)
    for i in range(len(box)):
        for mask in (0x01, 0x80):
            tampered = bytearray(box)
            tampered[i] ^= mask
            with pytest.raises(DecryptionError):
                prov.open_box(SECRET, CH, prov.TO_NEW, 0, bytes(tampered))
    for cut in (box[:-1], box[1:], box + b"\x00", b"", box[:15]):
        with pytest.raises(DecryptionError):
            prov.open_box(SECRET, CH, prov.TO_NEW, 0, cut)


def _seal_raw(plaintext: bytes, direction: str = prov.TO_NEW) -> bytes:
    """A correctly authenticated box holding arbitrary bytes (as a buggy peer would send)."""
    from imsg.crypto import aead

    return aead.seal(prov._key(SECRET, CH, direction), (0).to_bytes(12, "big"), plaintext, prov.LABEL_PROVISIONING + CH)


@pytest.mark.parametrize(
    "plaintext",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'"v"',
        b"1",
        b"null",
        b"{}",
        b'{"v": 2}',
        b'{"v": "1"}',
        b'{"v": true}',
        b'{"v": 1.0}',
        b'{"v": null}',
    ],
)
def test_authenticated_but_malformed_payload_is_decode_error(plaintext):
    with pytest.raises(DecodeError):
        prov.open_box(SECRET, CH, prov.TO_NEW, 0, _seal_raw(plaintext))


def test_field_helpers_are_strict():
    doc = {"v": 1, "k": prov.b64(bytes(32)), "s": "x", "i": 3, "b": True, "bad": "%%%"}
    assert prov.unb64(doc, "k", 32) == bytes(32)
    for name, length in (("missing", None), ("k", 31), ("bad", None), ("i", None)):
        with pytest.raises(DecodeError):
            prov.unb64(doc, name, length)
    assert prov.field(doc, "i", int) == 3
    with pytest.raises(DecodeError):
        prov.field(doc, "b", int)  # True is not an int here
    with pytest.raises(DecodeError):
        prov.field(doc, "s", int)


def test_oversized_payload_is_refused_when_sealing():
    with pytest.raises(ValueError):
        prov.seal_box(SECRET, CH, prov.TO_NEW, 0, {"v": 1, "x": "a" * prov.MAX_BOX})


# --- fuzz: only ProtocolError subclasses escape ---


@settings(max_examples=2000, deadline=None)
@given(st.text(max_size=60))
def test_fuzz_parse_code_text(text):
    try:
        ch, secret = prov.parse_code(text)
    except ProtocolError:
        return
    assert len(ch) == 8 and len(secret) == 10
    assert prov.parse_code(prov.make_code(ch, secret)) == (ch, secret)


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet=prov._ALPHABET + prov._ALPHABET.upper() + " -\t", min_size=25, max_size=40))
def test_fuzz_parse_code_near_valid(text):
    try:
        ch, secret = prov.parse_code(text)
    except ProtocolError:
        return
    assert prov.make_code(ch, secret).replace("-", "") == "".join(c for c in text.lower() if c not in " -\t")


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=400), st.sampled_from([prov.TO_NEW, prov.TO_EXISTING]), st.integers(0, 3))
def test_fuzz_open_box_random_bytes(box, direction, index):
    with pytest.raises(ProtocolError):
        prov.open_box(SECRET, CH, direction, index, box)


@settings(max_examples=1000, deadline=None)
@given(
    st.binary(max_size=200)
    | st.builds(
        lambda v: json.dumps(v).encode(),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=10),
            lambda inner: (
                st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["v", "x", "name"]), inner, max_size=4)
            ),
            max_leaves=10,
        ),
    )
)
def test_fuzz_open_box_authenticated_payloads(plaintext):
    try:
        doc = prov.open_box(SECRET, CH, prov.TO_NEW, 0, _seal_raw(plaintext))
    except ProtocolError:
        return
    assert isinstance(doc, dict) and doc["v"] == 1 and type(doc["v"]) is int
