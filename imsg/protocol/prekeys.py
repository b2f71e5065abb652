"""Prekeys: the signed X25519 prekey, the ML-KEM-768 prekeys (one-time and last resort),
and the one-time X25519 prekeys a device publishes; and the bundle a sender fetches.

Signatures are by the device's Ed25519 key over `label || type-tagged public key`, so
a signature for one key type can never vouch for a key of the other (SECURITY-TESTS 18).
"""

from __future__ import annotations

from dataclasses import dataclass

from imsg.crypto import dh, kem, sign
from imsg.crypto.errors import BadSignatureError
from imsg.crypto.labels import LABEL_KEM_PREKEY, LABEL_SIGNED_PREKEY
from imsg.protocol.encoding import KEY_MLKEM768, KEY_X25519, Reader, Writer, encode_key
from imsg.protocol.errors import UntrustedIdentityError
from imsg.protocol.identity import DeviceKeys, Rng


@dataclass(frozen=True, slots=True)
class SignedPreKey:
    key_id: int
    private: bytes
    public: bytes
    signature: bytes
    created_at: int

    @classmethod
    def generate(cls, device: DeviceKeys, key_id: int, now: int, rng: Rng) -> SignedPreKey:
        pair = dh.KeyPair(rng(32))
        sig = device.signing.sign(LABEL_SIGNED_PREKEY, encode_key(KEY_X25519, pair.public))
        return cls(key_id, pair.private, pair.public, sig, now)

    def encode(self) -> bytes:
        return (
            Writer()
            .u32(self.key_id)
            .raw(self.private)
            .raw(self.public)
            .raw(self.signature)
            .u64(self.created_at)
            .bytes()
        )

    @classmethod
    def decode(cls, data: bytes) -> SignedPreKey:
        r = Reader(data)
        out = cls(r.u32(), r.raw(32), r.raw(32), r.raw(64), r.u64())
        r.end()
        return out


@dataclass(frozen=True, slots=True)
class KemPreKey:
    key_id: int
    seed: bytes
    public: bytes
    signature: bytes
    last_resort: bool
    created_at: int

    @classmethod
    def generate(cls, device: DeviceKeys, key_id: int, now: int, rng: Rng, *, last_resort: bool) -> KemPreKey:
        pair = kem.KemKeyPair(rng(kem.SEED_LEN))
        sig = device.signing.sign(LABEL_KEM_PREKEY, encode_key(KEY_MLKEM768, pair.public))
        return cls(key_id, pair.seed, pair.public, sig, last_resort, now)

    def encode(self) -> bytes:
        # The public key is re-derived from the seed on load; store only what is needed.
        return (
            Writer()
            .u32(self.key_id)
            .raw(self.seed)
            .raw(self.signature)
            .u8(int(self.last_resort))
            .u64(self.created_at)
            .bytes()
        )

    @classmethod
    def decode(cls, data: bytes) -> KemPreKey:
        r = Reader(data)
        key_id, seed, sig, last, created = r.u32(), r.raw(64), r.raw(64), r.u8(), r.u64()
        r.end()
        return cls(key_id, seed, kem.KemKeyPair(seed).public, sig, bool(last), created)


@dataclass(frozen=True, slots=True)
class OneTimePreKey:
    key_id: int
    private: bytes
    public: bytes

    @classmethod
    def generate(cls, key_id: int, rng: Rng) -> OneTimePreKey:
        pair = dh.KeyPair(rng(32))
        return cls(key_id, pair.private, pair.public)


@dataclass(frozen=True, slots=True)
class PreKeyBundle:
    """What the relay serves for one device. Untrusted until `verify` against the
    device's signing key from a device list signed by the pinned account key."""

    device_id: int
    signed_prekey_id: int
    signed_prekey: bytes
    signed_prekey_signature: bytes
    kem_prekey_id: int
    kem_prekey: bytes
    kem_prekey_signature: bytes
    kem_last_resort: bool
    one_time_prekey_id: int | None = None
    one_time_prekey: bytes | None = None

    def verify(self, device_signing_key: bytes) -> None:
        try:
            sign.verify(
                device_signing_key,
                LABEL_SIGNED_PREKEY,
                encode_key(KEY_X25519, self.signed_prekey),
                self.signed_prekey_signature,
            )
            sign.verify(
                device_signing_key,
                LABEL_KEM_PREKEY,
                encode_key(KEY_MLKEM768, self.kem_prekey),
                self.kem_prekey_signature,
            )
        except (BadSignatureError, ValueError):
            raise UntrustedIdentityError("prekey bundle signature does not verify") from None
