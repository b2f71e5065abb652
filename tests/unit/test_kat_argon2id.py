"""Argon2id (pyca `cryptography`), the passcode KDF of imsg/store/vault.py, against the
known answer of RFC 9106 §5.3, and our wrapping of it (parameters from the key file)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from imsg.store import vault

h = bytes.fromhex

# RFC 9106 §5.3 (Argon2id, version 0x13): memory 32 KiB, 3 passes, 4 lanes, 32-byte tag,
# password 32 x 0x01, salt 16 x 0x02, secret 8 x 0x03, associated data 12 x 0x04.
RFC9106_TAG = h("0d640df58d78766c08c037a34a8b53c9d01ef0452d75b65eb52520e96b01e659")


def test_rfc9106_argon2id_vector():
    kdf = Argon2id(
        salt=b"\x02" * 16, length=32, iterations=3, lanes=4, memory_cost=32, ad=b"\x04" * 12, secret=b"\x03" * 8
    )
    assert kdf.derive(b"\x01" * 32) == RFC9106_TAG


@pytest.mark.parametrize("field,value", [("iterations", 2), ("lanes", 2), ("memory_kib", 64)])
def test_every_parameter_changes_the_key(field, value):
    kf = vault.KeyFile(b"\x02" * 16, b"\0" * 12, b"", b"", b"", memory_kib=32, iterations=3, lanes=4)
    base = vault.derive_kek("passcode", kf)
    assert base == Argon2id(salt=b"\x02" * 16, length=32, iterations=3, lanes=4, memory_cost=32).derive(b"passcode")
    from dataclasses import replace

    assert vault.derive_kek("passcode", replace(kf, **{field: value})) != base


def test_passcode_is_nfc_normalised():
    kf = vault.KeyFile(b"\x02" * 16, b"\0" * 12, b"", b"", b"", memory_kib=32, iterations=1, lanes=1)
    assert vault.derive_kek("caf\u00e9", kf) == vault.derive_kek("cafe\u0301", kf)
