"""RFC 9497 Appendix A.1.2 (ristretto255-SHA512, VOPRF mode 0x01) against `imsg_oprf`:
key derivation, the batch-of-one and the batch-of-two vectors with their fixed proof
randomness, and the proof rejecting what a dishonest server could send."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import imsg_oprf as oprf
from imsg_oprf import voprf

DATA = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "rfc9497" / "voprf-ristretto255-sha512.json").read_text()
)
SUITE = DATA["voprf"]
SK = bytes.fromhex(SUITE["skSm"])
PK = bytes.fromhex(SUITE["pkSm"])


def _h(values):
    return [bytes.fromhex(v) for v in values]


def test_context_strings_per_mode():
    assert oprf.context_string(oprf.MODE_OPRF) == b"OPRFV1-\x00-ristretto255-SHA512"
    assert oprf.context_string(oprf.MODE_VOPRF) == b"OPRFV1-\x01-ristretto255-SHA512"
    assert oprf.hash_to_group_dst(oprf.MODE_VOPRF) == b"HashToGroup-OPRFV1-\x01-ristretto255-SHA512"
    with pytest.raises(ValueError):
        oprf.context_string(0x02)


def test_derive_key_pair_voprf_mode():
    sk, pk = oprf.derive_key_pair(bytes.fromhex(SUITE["Seed"]), bytes.fromhex(SUITE["KeyInfo"]), oprf.MODE_VOPRF)
    assert (sk, pk) == (SK, PK)


@pytest.mark.parametrize("v", SUITE["vectors"], ids=lambda v: v["name"])
def test_voprf_protocol(v):
    inputs, blinds = _h(v["Input"]), _h(v["Blind"])
    blinded = []
    for x, r in zip(inputs, blinds, strict=True):
        blind, element = oprf.blind(x, os.urandom, fixed_blind=r, mode=oprf.MODE_VOPRF)
        assert blind == r
        blinded.append(element)
    assert [e.hex() for e in blinded] == v["BlindedElement"]
    evaluated, proof = voprf.blind_evaluate_batch(
        SK, PK, blinded, os.urandom, fixed_r=bytes.fromhex(v["ProofRandomScalar"])
    )
    assert [e.hex() for e in evaluated] == v["EvaluationElement"]
    assert proof.hex() == v["Proof"]
    outputs = voprf.finalize_batch(inputs, blinds, evaluated, blinded, PK, proof)
    assert [o.hex() for o in outputs] == v["Output"]
    assert [oprf.evaluate(SK, x, oprf.MODE_VOPRF).hex() for x in inputs] == v["Output"]


def _batch(n=3):
    inputs = [f"+1555000{i}".encode() for i in range(n)]
    pairs = [oprf.blind(x, os.urandom, mode=oprf.MODE_VOPRF) for x in inputs]
    blinds, blinded = [p[0] for p in pairs], [p[1] for p in pairs]
    evaluated, proof = voprf.blind_evaluate_batch(SK, PK, blinded, os.urandom)
    return inputs, blinds, blinded, evaluated, proof


def test_a_random_batch_verifies_and_matches_evaluate():
    inputs, blinds, blinded, evaluated, proof = _batch()
    outputs = voprf.finalize_batch(inputs, blinds, evaluated, blinded, PK, proof)
    assert outputs == [oprf.evaluate(SK, x, oprf.MODE_VOPRF) for x in inputs]
    assert outputs != [oprf.evaluate(SK, x, oprf.MODE_OPRF) for x in inputs]


def test_composites_fast_equals_composites():
    _, _, blinded, evaluated, _ = _batch()
    assert voprf.compute_composites_fast(SK, PK, blinded, evaluated) == voprf.compute_composites(PK, blinded, evaluated)


def test_another_key_is_refused():
    """A relay that evaluates under a fresh key (to link lookups) cannot prove it is pkS."""
    inputs, blinds, blinded, _, _ = _batch()
    other_sk, other_pk = oprf.derive_key_pair(os.urandom(32), b"other", oprf.MODE_VOPRF)
    evaluated, proof = voprf.blind_evaluate_batch(other_sk, other_pk, blinded, os.urandom)
    with pytest.raises(oprf.VerifyError):
        voprf.finalize_batch(inputs, blinds, evaluated, blinded, PK, proof)


def test_one_element_under_another_key_is_refused():
    inputs, blinds, blinded, evaluated, proof = _batch()
    other_sk, _ = oprf.derive_key_pair(os.urandom(32), b"other", oprf.MODE_VOPRF)
    evaluated[1] = oprf.blind_evaluate(other_sk, blinded[1])
    with pytest.raises(oprf.VerifyError):
        voprf.finalize_batch(inputs, blinds, evaluated, blinded, PK, proof)


def test_reordered_or_tampered_proof_is_refused():
    inputs, blinds, blinded, evaluated, proof = _batch()
    with pytest.raises(oprf.VerifyError):
        voprf.finalize_batch(inputs, blinds, evaluated[::-1], blinded, PK, proof)
    for bad in (proof[32:] + proof[:32], bytes(64), b"\xff" * 64, proof[:63], proof[:-1] + bytes([proof[-1] ^ 1])):
        with pytest.raises(oprf.VerifyError):
            voprf.finalize_batch(inputs, blinds, evaluated, blinded, PK, bad)
    with pytest.raises(oprf.VerifyError):
        voprf.finalize_batch(inputs, blinds, evaluated[:2], blinded, PK, proof)


def test_identity_and_bad_encodings_are_refused():
    inputs, blinds, blinded, evaluated, proof = _batch(1)
    with pytest.raises(oprf.DeserializeError):
        voprf.finalize_batch(inputs, blinds, [bytes(32)], blinded, PK, proof)
    with pytest.raises(oprf.DeserializeError):
        voprf.finalize_batch(inputs, blinds, evaluated, blinded, bytes(32), proof)
