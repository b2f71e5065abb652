"""RFC 9497 Appendix A.1.1.1 (ristretto255-SHA512, OPRF mode) and RFC 9380 K.3 vectors
against `imsg_oprf`, plus the checks the RFC requires of received elements."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import imsg_oprf as oprf

DATA = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "rfc9497" / "oprf-ristretto255-sha512.json").read_text()
)
SUITE = DATA["oprf"]
SK = bytes.fromhex(SUITE["skSm"])


def test_context_string_and_dst_are_the_rfcs():
    assert oprf.CONTEXT_STRING == b"OPRFV1-\x00-ristretto255-SHA512"
    assert oprf.HASH_TO_GROUP_DST == b"HashToGroup-OPRFV1-\x00-ristretto255-SHA512"


@pytest.mark.parametrize(
    "v", DATA["expand_message_xmd_sha512"]["vectors"], ids=lambda v: f"{v['msg']!r}-{v['len_in_bytes']}"
)
def test_expand_message_xmd_sha512(v):
    dst = DATA["expand_message_xmd_sha512"]["DST"].encode()
    assert oprf.expand_message_xmd(v["msg"].encode(), dst, v["len_in_bytes"]).hex() == v["uniform_bytes"]


def test_derive_key_pair():
    sk, pk = oprf.derive_key_pair(bytes.fromhex(SUITE["Seed"]), bytes.fromhex(SUITE["KeyInfo"]))
    assert sk == SK
    assert len(pk) == 32


@pytest.mark.parametrize("v", SUITE["vectors"], ids=lambda v: v["name"])
def test_oprf_protocol(v):
    data = bytes.fromhex(v["Input"])
    blind, blinded = oprf.blind(data, os.urandom, fixed_blind=bytes.fromhex(v["Blind"]))
    assert blinded.hex() == v["BlindedElement"]
    evaluated = oprf.blind_evaluate(SK, blinded)
    assert evaluated.hex() == v["EvaluationElement"]
    assert oprf.finalize(data, blind, evaluated).hex() == v["Output"]
    assert oprf.evaluate(SK, data).hex() == v["Output"]


def test_random_blinds_give_the_same_output():
    data = b"+15551234567"
    outs = set()
    for _ in range(3):
        blind, blinded = oprf.blind(data, os.urandom)
        outs.add(oprf.finalize(data, blind, oprf.blind_evaluate(SK, blinded)))
    assert outs == {oprf.evaluate(SK, data)}


@pytest.mark.parametrize("bad", [bytes(32), b"\xff" * 32, b"\x01" * 31, b"\x01" * 33, b""])
def test_evaluation_rejects_identity_and_non_canonical_elements(bad):
    with pytest.raises(oprf.DeserializeError):
        oprf.blind_evaluate(SK, bad)
    blind, _ = oprf.blind(b"x", os.urandom)
    with pytest.raises(oprf.DeserializeError):
        oprf.finalize(b"x", blind, bad)


def test_scalars_must_be_canonical_and_non_zero():
    with pytest.raises(oprf.DeserializeError):
        oprf.deserialize_scalar(bytes(32))
    with pytest.raises(oprf.DeserializeError):
        oprf.deserialize_scalar(b"\xff" * 32)
