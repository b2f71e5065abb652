"""imsg's own known-answer vectors (tests/vectors/imsg/protocol-v1.json, quoted in
docs/PROTOCOL.md): the code must keep producing them, or the wire format changed."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "scripts"))
import make_protocol_vectors

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "imsg" / "protocol-v1.json").read_text())


@pytest.fixture(scope="module")
def rebuilt():
    return make_protocol_vectors.build()


@pytest.mark.parametrize("name", sorted(set(VECTORS) - set(make_protocol_vectors.RANDOMISED)))
def test_vector(name, rebuilt):
    assert rebuilt[name] == VECTORS[name], f"{name} changed: the v1 wire format must not"


def test_pq_step_vector_decrypts_to_its_root(rebuilt):
    """The PQ step's KEM encapsulation is randomised, so its vector is checked by decrypting
    it with the rebuilt state: the same plaintext and the same root key."""
    from imsg.protocol import ratchet

    b = ratchet.RatchetState.decode(bytes.fromhex(rebuilt["ratchet_pq_state_b"]))
    step = bytes.fromhex(VECTORS["ratchet_pq_step"])
    assert ratchet.read_header(step)[4].ct is not None  # it carries a ciphertext and a key
    assert b.decrypt(step, 0) == b"step"
    assert b.root_key.hex() == VECTORS["ratchet_pq_root_after_step"]
    assert b.kem_own is None and b.kem_remote is not None  # B's key is spent; A's is held


def test_vectors_are_quoted_in_the_spec():
    spec = "".join((Path(__file__).parents[2] / "docs" / "PROTOCOL.md").read_text().split())
    for name in (
        "account_id",
        "pqxdh_sk_three_dh",
        "kdf_rk_out",
        "kdf_rk_pq_out",
        "safety_number",
        "account_key_public",
    ):
        assert "".join(VECTORS[name].split()) in spec, f"docs/PROTOCOL.md does not quote {name}"
