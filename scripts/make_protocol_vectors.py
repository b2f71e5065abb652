#!/usr/bin/env python3
"""Write tests/vectors/imsg/protocol-v1.json: known-answer vectors for imsg's own
constructions, from fixed inputs. tests/unit/test_protocol_vectors.py checks the code
still produces them, and docs/PROTOCOL.md quotes them. Run it only when the protocol
changes on purpose (and then bump the wire version)."""

from __future__ import annotations

import json
from pathlib import Path

from imsg.crypto import dh, sign
from imsg.crypto.labels import LABEL_SENDER_CERTIFICATE
from imsg.protocol import envelope, pqxdh, ratchet, sealed
from imsg.protocol.consts import PQ_STEP_MESSAGES
from imsg.protocol.identity import AccountKey, DeviceKeys, DeviceList, account_id_for, safety_number
from imsg.protocol.session import Address, associated_data


def counter_rng(seed: int):
    """Deterministic 'randomness' for vectors: bytes seed, seed+1, ... (never for real keys)."""
    state = [seed]

    def rng(n: int) -> bytes:
        out = bytes((state[0] + i) % 256 for i in range(n))
        state[0] += n
        return out

    return rng


def _pq_vectors(sk: bytes, spk: dh.KeyPair) -> tuple[dict, ratchet.RatchetState]:
    """The PQ ratchet (§5a): its root KDF, the responder's first reply announcing its KEM key
    (key generation is from seeds, so it is reproducible), and its state after it, ready
    for the initiator's PQ step. Returns the vectors and the initiator's state."""
    rk, ck = ratchet.kdf_rk_pq(bytes([5]) * 32, bytes([6]) * 32, bytes([7]) * 32, bytes(1184), bytes(1088))
    a = ratchet.RatchetState.initiator(sk, spk.public, b"ad-a", b"ad-b")
    b = ratchet.RatchetState.responder(sk, spk, b"ad-b", b"ad-a")
    first = a.encrypt(b"hello", counter_rng(300), now=0)  # chain 1: 0x04, no KEM parts
    assert b.decrypt(first, 0) == b"hello"
    announce = b.encrypt(b"hi", counter_rng(400), now=0)  # chain 2: B announces its KEM key
    assert a.decrypt(announce, 0) == b"hi"
    vectors = {
        "kdf_rk_pq_out": (rk + ck).hex(),
        "ratchet_pq_first": first.hex(),
        "ratchet_pq_announce": announce.hex(),
        "ratchet_pq_state_b": b.encode().hex(),
    }
    return vectors, a


# ML-KEM encapsulation takes its randomness inside pyca `cryptography`, so a PQ step cannot
# be rebuilt byte for byte: it is written once, and the test decrypts it with the rebuilt
# state instead (tests/unit/test_protocol_vectors.py).
RANDOMISED = ("ratchet_pq_step", "ratchet_pq_root_after_step")


def pq_step(a: ratchet.RatchetState, b_state: bytes) -> dict:
    """A's PQ step (a ciphertext to B's announced key and A's next key), and B's root after it."""
    a.pq_count = PQ_STEP_MESSAGES  # as after 16 messages: A's next chain is a PQ step
    step = a.encrypt(b"step", counter_rng(500), now=0)
    b = ratchet.RatchetState.decode(b_state)
    assert b.decrypt(step, 0) == b"step"
    return {"ratchet_pq_step": step.hex(), "ratchet_pq_root_after_step": b.root_key.hex()}


def build() -> dict:
    alice_key, bob_key = AccountKey(bytes(range(32))), AccountKey(bytes(range(32, 64)))
    device = DeviceKeys(1, bytes(range(64, 96)), bytes(range(96, 128)))
    dl = DeviceList(alice_key.public, serial=1, signed_at=1_700_000_000_000, devices=(device.entry(1_700_000_000_000),))
    sk = pqxdh._derive(
        [bytes([1]) * 32, bytes([2]) * 32, bytes([3]) * 32],
        bytes([4]) * 32,
        device.identity.public,
        dh.KeyPair(bytes(range(128, 160))).public,
        bytes(1184),
        bytes(1088),
    )
    rk, ck = ratchet.kdf_rk(bytes([5]) * 32, bytes([6]) * 32)
    spk = dh.KeyPair(bytes(range(160, 192)))
    a = ratchet.RatchetState.initiator(sk, spk.public, b"ad-a", b"ad-b", pq=False)
    first = a.encrypt(b"hello", counter_rng(200))
    pq, _ = _pq_vectors(sk, spk)
    content_pkg, content_ct = envelope.seal_content(b"hello", counter_rng(7))
    relay_key = sign.SigningKey(bytes(range(192, 224)))
    cert_body = sealed.certificate_body(
        sealed.relay_key_id(relay_key.public),
        Address(account_id_for(alice_key.public), 1),
        device.identity.public,
        1_700_086_400_000,
    )
    return {
        "account_key_private": alice_key.private.hex(),
        "account_key_public": alice_key.public.hex(),
        "account_id": account_id_for(alice_key.public),
        "safety_number": safety_number(alice_key.public, bob_key.public),
        "safety_number_other_key_public": bob_key.public.hex(),
        "device_list_signed": alice_key.sign_device_list(dl).hex(),
        "pqxdh_sk_three_dh": sk.hex(),
        "kdf_rk_out": (rk + ck).hex(),
        "ratchet_first_message": first.hex(),
        **pq,
        "content_key_package": content_pkg.hex(),
        "content_ciphertext": content_ct.hex(),
        "sealed_device_key_public": device.sealed.public.hex(),
        "access_key": sealed.access_key(bytes(range(224, 256))).hex(),
        "relay_key_public": relay_key.public.hex(),
        "sender_certificate": (cert_body + relay_key.sign(LABEL_SENDER_CERTIFICATE, cert_body)).hex(),
        "associated_data": associated_data(
            Address("00" * 16, 1), bytes(32), Address("11" * 16, 2), bytes([9]) * 32
        ).hex(),
    }


if __name__ == "__main__":
    path = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "imsg" / "protocol-v1.json"
    vectors = build()
    old = json.loads(path.read_text()) if path.exists() else {}
    if all(name in old for name in RANDOMISED) and old.get("ratchet_pq_state_b") == vectors["ratchet_pq_state_b"]:
        vectors.update({name: old[name] for name in RANDOMISED})  # still valid: keep them
    else:
        sk = bytes.fromhex(vectors["pqxdh_sk_three_dh"])
        _, a = _pq_vectors(sk, dh.KeyPair(bytes(range(160, 192))))
        vectors.update(pq_step(a, bytes.fromhex(vectors["ratchet_pq_state_b"])))
    path.write_text(json.dumps(vectors, indent=2) + "\n")
    print(f"wrote {path}")
