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


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_vector(name, rebuilt):
    assert rebuilt[name] == VECTORS[name], f"{name} changed: the v1 wire format must not"


def test_vectors_are_quoted_in_the_spec():
    spec = "".join((Path(__file__).parents[2] / "docs" / "PROTOCOL.md").read_text().split())
    for name in ("account_id", "pqxdh_sk_three_dh", "kdf_rk_out", "safety_number", "account_key_public"):
        assert "".join(VECTORS[name].split()) in spec, f"docs/PROTOCOL.md does not quote {name}"
