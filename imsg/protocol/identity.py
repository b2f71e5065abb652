"""Accounts, devices and the signed device list.

An account key (Ed25519) signs the account's device list; each device has its own
X25519 identity key (for PQXDH) and Ed25519 signing key (for its prekeys). A client trusts
a device only if it appears in a device list signed by the account key it has pinned, so
the relay cannot add a device to anyone's account (the Matrix attack, SECURITY-TESTS 4).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from imsg.crypto import aead, dh, hpke, sign
from imsg.crypto.errors import AuthenticationError, BadSignatureError
from imsg.crypto.kdf import hkdf
from imsg.crypto.labels import (
    LABEL_ACCOUNT_ID,
    LABEL_DEVICE_LIST,
    LABEL_DEVICE_NAME,
    LABEL_SAFETY_NUMBER,
    LABEL_SEALED_DEVICE_KEY,
)
from imsg.protocol.consts import MAX_DEVICES, WIRE_VERSION
from imsg.protocol.encoding import (
    KEY_ED25519,
    KEY_HPKE_MLKEM768_X25519,
    KEY_X25519,
    Reader,
    Writer,
    decode_key,
    encode_key,
)
from imsg.protocol.errors import DecodeError, UntrustedIdentityError

Rng = Callable[[int], bytes]


def account_id_for(account_key_public: bytes) -> str:
    """The relay address of an account: derived from its key, so it cannot be squatted."""
    tagged = encode_key(KEY_ED25519, account_key_public)
    return hashlib.sha256(LABEL_ACCOUNT_ID + tagged).digest()[:16].hex()


class AccountKey:
    """The account's long-term Ed25519 key. It signs device lists and nothing else."""

    __slots__ = ("_key",)

    def __init__(self, private: bytes):
        self._key = sign.SigningKey(private)

    @classmethod
    def generate(cls, rng: Rng) -> AccountKey:
        return cls(rng(32))

    @property
    def private(self) -> bytes:
        return self._key.private

    @property
    def public(self) -> bytes:
        return self._key.public

    @property
    def account_id(self) -> str:
        return account_id_for(self.public)

    def sign_device_list(self, device_list: DeviceList) -> bytes:
        body = device_list.encode_body()
        return body + self._key.sign(LABEL_DEVICE_LIST, body)


@dataclass(frozen=True, slots=True)
class DeviceEntry:
    device_id: int
    identity_key: bytes  # X25519 public, raw
    signing_key: bytes  # Ed25519 public, raw
    added_at: int  # ms since the epoch
    # The device's name, encrypted under a key only the account's own devices hold
    # (derived from the account key): the relay and contacts see only ciphertext.
    name_ciphertext: bytes = b""
    # The device's sealed-sender key (HPKE, ML-KEM-768 + X25519), raw; b"" for a device
    # that has none (then nobody can send it sealed envelopes, only identified ones).
    sealed_key: bytes = b""


@dataclass(frozen=True, slots=True)
class DeviceList:
    account_key: bytes  # Ed25519 public, raw
    serial: int  # grows with every change, so an old list cannot be replayed as new
    signed_at: int
    devices: tuple[DeviceEntry, ...]

    def encode_body(self) -> bytes:
        w = Writer().u8(WIRE_VERSION).key(KEY_ED25519, self.account_key)
        w.u64(self.serial).u64(self.signed_at).u16(len(self.devices))
        for d in self.devices:
            w.u32(d.device_id).key(KEY_X25519, d.identity_key).key(KEY_ED25519, d.signing_key)
            w.u64(d.added_at).var(d.name_ciphertext)
            w.var(encode_key(KEY_HPKE_MLKEM768_X25519, d.sealed_key) if d.sealed_key else b"")
        return w.bytes()

    def device(self, device_id: int) -> DeviceEntry | None:
        for d in self.devices:
            if d.device_id == device_id:
                return d
        return None

    @property
    def device_ids(self) -> list[int]:
        return [d.device_id for d in self.devices]


def decode_device_list(blob: bytes) -> tuple[DeviceList, bytes, bytes]:
    """Parse a signed device list; return (list, signed body, signature). No trust yet."""
    if len(blob) < sign.SIGNATURE_LEN:
        raise DecodeError("device list too short")
    body, signature = blob[: -sign.SIGNATURE_LEN], blob[-sign.SIGNATURE_LEN :]
    r = Reader(body)
    if r.u8() != WIRE_VERSION:
        raise DecodeError("unsupported device list version")
    account_key = r.key(KEY_ED25519)
    serial, signed_at, count = r.u64(), r.u64(), r.u16()
    if count == 0 or count > MAX_DEVICES:
        raise DecodeError("device list must hold 1 to MAX_DEVICES devices")
    devices = []
    for _ in range(count):
        device_id, identity, signing, added = r.u32(), r.key(KEY_X25519), r.key(KEY_ED25519), r.u64()
        name = r.var(max_len=MAX_DEVICE_NAME_CIPHERTEXT)
        sealed = r.var(max_len=1 + hpke.PUBLIC_KEY_LEN)
        devices.append(
            DeviceEntry(
                device_id,
                identity,
                signing,
                added,
                name,
                decode_key(KEY_HPKE_MLKEM768_X25519, sealed) if sealed else b"",
            )
        )
    r.end()
    ids = [d.device_id for d in devices]
    if ids != sorted(set(ids)) or ids[0] < 1:
        raise DecodeError("device ids must be positive, unique and ascending")
    return DeviceList(account_key, serial, signed_at, tuple(devices)), body, signature


def verify_device_list(blob: bytes, pinned_account_key: bytes) -> DeviceList:
    """Return the device list if the pinned account key signed it; else raise."""
    device_list, body, signature = decode_device_list(blob)
    if device_list.account_key != pinned_account_key:
        raise UntrustedIdentityError("device list names a different account key")
    try:
        sign.verify(pinned_account_key, LABEL_DEVICE_LIST, body, signature)
    except BadSignatureError:
        raise UntrustedIdentityError("device list is not signed by the pinned account key") from None
    return device_list


class DeviceKeys:
    """This device's private identity: X25519 for key agreement, Ed25519 for prekeys, and
    the HPKE key sealed envelopes are addressed to.

    Every way a device comes to exist (init, linking, a restored backup) goes through
    `generate` or this constructor, and the sealed-sender key derives from the identity key
    (HKDF with its own label), so no device can lack one and there is no extra secret to
    store, copy or back up."""

    __slots__ = ("device_id", "identity", "signing", "_sealed")

    def __init__(self, device_id: int, identity_private: bytes, signing_private: bytes):
        self.device_id = device_id
        self.identity = dh.KeyPair(identity_private)
        self.signing = sign.SigningKey(signing_private)
        self._sealed: hpke.HpkeKeyPair | None = None

    @classmethod
    def generate(cls, device_id: int, rng: Rng) -> DeviceKeys:
        return cls(device_id, rng(32), rng(32))

    @property
    def sealed(self) -> hpke.HpkeKeyPair:
        """The sealed-sender key pair (expanded on first use: ML-KEM key generation costs)."""
        if self._sealed is None:
            seed = hkdf(self.identity.private, salt=None, info=LABEL_SEALED_DEVICE_KEY, length=hpke.SEED_LEN)
            self._sealed = hpke.HpkeKeyPair(seed)
        return self._sealed

    def entry(self, added_at: int, name_ciphertext: bytes = b"") -> DeviceEntry:
        return DeviceEntry(
            self.device_id, self.identity.public, self.signing.public, added_at, name_ciphertext, self.sealed.public
        )


MAX_DEVICE_NAME = 64  # characters
MAX_DEVICE_NAME_CIPHERTEXT = 12 + 4 * MAX_DEVICE_NAME + 16 + 64


def _device_name_key(account_private: bytes) -> bytes:
    return hkdf(account_private, salt=None, info=LABEL_DEVICE_NAME, length=32)


def seal_device_name(account_private: bytes, device_id: int, name: str, rng: Rng) -> bytes:
    """nonce (12) || AES-256-GCM(HKDF(account key, LABEL_DEVICE_NAME), name, AD = u32(device_id))."""
    nonce = rng(12)
    ad = device_id.to_bytes(4, "big")
    return nonce + aead.seal(_device_name_key(account_private), nonce, name[:MAX_DEVICE_NAME].encode(), ad)


def open_device_name(account_private: bytes | None, entry: DeviceEntry) -> str:
    """The device's name, or "" when it has none or we cannot read it."""
    if not entry.name_ciphertext or account_private is None or len(entry.name_ciphertext) < 28:
        return ""
    nonce, ct = entry.name_ciphertext[:12], entry.name_ciphertext[12:]
    try:
        raw = aead.open_(_device_name_key(account_private), nonce, ct, entry.device_id.to_bytes(4, "big"))
        return raw.decode("utf-8", "replace")
    except AuthenticationError:
        return ""


def device_fingerprint(identity_key: bytes) -> str:
    """A short form of one device's identity key, to tell devices apart in a list."""
    digest = hashlib.sha256(LABEL_SAFETY_NUMBER + encode_key(KEY_X25519, identity_key)).hexdigest()
    return " ".join(digest[i : i + 4] for i in range(0, 16, 4))


def fingerprint(account_key: bytes) -> str:
    """A short, human-comparable form of one account key (hex groups)."""
    digest = hashlib.sha256(LABEL_SAFETY_NUMBER + encode_key(KEY_ED25519, account_key)).hexdigest()
    return " ".join(digest[i : i + 4] for i in range(0, 32, 4))


_SAFETY_ITERATIONS = 5200  # as Signal's fingerprint: slows a search for a colliding key


def _safety_half(account_key: bytes) -> str:
    tagged = encode_key(KEY_ED25519, account_key)
    h = hashlib.sha512(b"\x00\x01" + LABEL_SAFETY_NUMBER + tagged).digest()
    for _ in range(_SAFETY_ITERATIONS):
        h = hashlib.sha512(h + tagged).digest()
    return "".join(f"{int.from_bytes(h[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5))


def safety_number(key_a: bytes, key_b: bytes) -> str:
    """60 digits from the two type-tagged account keys only — never from relay-chosen
    identifiers (CVE-2022-39250). Both sides compute the same number."""
    halves = sorted((_safety_half(key_a), _safety_half(key_b)))
    digits = halves[0] + halves[1]
    return " ".join(digits[i : i + 5] for i in range(0, 60, 5))
