"""PQXDH-style hybrid key agreement (Signal's PQXDH, revision 3, with X25519, ML-KEM-768
and SHA-256).

    DH1 = DH(IK_A, SPK_B)   DH2 = DH(EK_A, IK_B)   DH3 = DH(EK_A, SPK_B)
    DH4 = DH(EK_A, OPK_B)   (only when a one-time prekey was served)
    (CT, SS) = ML-KEM-768.Encaps(PQPK_B)
    SK = HKDF-SHA256(ikm  = F || DH1 || DH2 || DH3 [|| DH4] || SS,
                     salt = 32 zero bytes,
                     info = LABEL_PQXDH || SHA-256(Enc(IK_A) || Enc(IK_B) || Enc(PQPK_B) || CT))

The info binds both identities, the KEM public key and the KEM ciphertext, as the
formal analysis of PQXDH recommends (Bhargavan et al. 2023; SECURITY-TESTS 18): a KEM
ciphertext re-encapsulated to another key, or a key of the wrong type, cannot yield the
same SK. Every DH raises on an all-zero output (SECURITY-TESTS 8).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from imsg.crypto import dh, kem
from imsg.crypto.kdf import hkdf
from imsg.crypto.labels import LABEL_PQXDH
from imsg.protocol.consts import PQXDH_F
from imsg.protocol.encoding import KEY_MLKEM768, KEY_X25519, encode_key
from imsg.protocol.identity import DeviceKeys, Rng
from imsg.protocol.prekeys import KemPreKey, OneTimePreKey, PreKeyBundle, SignedPreKey

_SALT = bytes(32)


@dataclass(frozen=True, slots=True)
class Initiation:
    """What the initiator sends (inside every prekey message) so the responder can
    compute the same SK."""

    identity_key: bytes  # IK_A
    base_key: bytes  # EK_A public
    signed_prekey_id: int
    one_time_prekey_id: int | None
    kem_prekey_id: int
    kem_ciphertext: bytes


def _derive(dhs: list[bytes], ss: bytes, ik_a: bytes, ik_b: bytes, kem_pk: bytes, kem_ct: bytes) -> bytes:
    transcript = hashlib.sha256(
        encode_key(KEY_X25519, ik_a) + encode_key(KEY_X25519, ik_b) + encode_key(KEY_MLKEM768, kem_pk) + kem_ct
    ).digest()
    return hkdf(PQXDH_F + b"".join(dhs) + ss, salt=_SALT, info=LABEL_PQXDH + transcript, length=32)


def initiate(local: DeviceKeys, remote_identity_key: bytes, bundle: PreKeyBundle, rng: Rng) -> tuple[bytes, Initiation]:
    """Alice's side. The caller has verified `bundle` against the remote device's signing
    key from a trusted device list. Returns (SK, initiation)."""
    ek = dh.KeyPair(rng(32))
    dhs = [
        local.identity.exchange(bundle.signed_prekey),
        ek.exchange(remote_identity_key),
        ek.exchange(bundle.signed_prekey),
    ]
    if bundle.one_time_prekey is not None:
        dhs.append(ek.exchange(bundle.one_time_prekey))
    ss, ct = kem.encapsulate(bundle.kem_prekey)
    sk = _derive(dhs, ss, local.identity.public, remote_identity_key, bundle.kem_prekey, ct)
    return sk, Initiation(
        identity_key=local.identity.public,
        base_key=ek.public,
        signed_prekey_id=bundle.signed_prekey_id,
        one_time_prekey_id=bundle.one_time_prekey_id if bundle.one_time_prekey else None,
        kem_prekey_id=bundle.kem_prekey_id,
        kem_ciphertext=ct,
    )


def respond(
    local: DeviceKeys,
    initiation: Initiation,
    signed_prekey: SignedPreKey,
    kem_prekey: KemPreKey,
    one_time_prekey: OneTimePreKey | None,
) -> bytes:
    """Bob's side: the same SK from the prekeys the initiation names."""
    spk = dh.KeyPair(signed_prekey.private)
    dhs = [
        spk.exchange(initiation.identity_key),
        local.identity.exchange(initiation.base_key),
        spk.exchange(initiation.base_key),
    ]
    if one_time_prekey is not None:
        dhs.append(dh.KeyPair(one_time_prekey.private).exchange(initiation.base_key))
    ss = kem.KemKeyPair(kem_prekey.seed).decapsulate(initiation.kem_ciphertext)
    return _derive(
        dhs,
        ss,
        initiation.identity_key,
        local.identity.public,
        kem_prekey.public,
        initiation.kem_ciphertext,
    )
