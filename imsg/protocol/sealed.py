"""Sealed sender: envelopes whose sender only the recipient learns (docs/PROTOCOL.md §6e).

    SenderCertificate = CertBody || Sig(relay key, LABEL_SENDER_CERTIFICATE, CertBody)
    CertBody          = u8(1) || key_id (8) || account_id (16) || u32(device_id)
                        || Enc(IK_sender) || u64(expires_at_ms)
    key_id            = SHA-256(Enc(relay key))[0:8]

    Inner             = u8(1) || var(SenderCertificate) || var(SessionMessage)
                        || var(ContentCiphertext) || 0x00 * n
    SealedEnvelope    = u8(1) || u8(0x02) || HPKE.Seal(SK_R, info = LABEL_SEALED_ENVELOPE
                        || addr(R), aad = "", Inner)

`n` pads the whole envelope to the smallest of SEALED_BUCKETS that would hold it if its
session message carried the largest kind-specific parts (`KIND_HEADROOM`: a prekey prefix
with a KEM announcement, or a PQ step's ciphertext and key), so the bucket depends on the
content alone and the relay cannot tell a session's first message, or a PQ step, from any
other (docs/PROTOCOL.md §6e). The relay
signs certificates for the account and device a request authenticates; the identity key
is the device's own claim, which the recipient checks against the sender's signed device
list and the session it decrypts with. A relay key is trusted if the client pinned it or a
trusted key endorsed it: `Sig(old, LABEL_RELAY_KEY, Enc(new))` (planned rotation).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from imsg.crypto import hpke, sign
from imsg.crypto.errors import AuthenticationError, BadSignatureError
from imsg.crypto.kdf import hkdf
from imsg.crypto.labels import LABEL_ACCESS_KEY, LABEL_RELAY_KEY, LABEL_SEALED_ENVELOPE, LABEL_SENDER_CERTIFICATE
from imsg.protocol import ratchet, session
from imsg.protocol.consts import SEALED_BUCKETS, WIRE_VERSION
from imsg.protocol.encoding import KEY_ED25519, KEY_X25519, Reader, Writer, encode_key
from imsg.protocol.errors import CertificateError, DecodeError, DecryptionError, ProtocolError
from imsg.protocol.session import Address

KIND_SEALED = 0x02
KEY_ID_LEN = 8
ACCESS_KEY_LEN = 16
CERTIFICATE_LEN = 1 + KEY_ID_LEN + 16 + 4 + 33 + 8 + sign.SIGNATURE_LEN  # 134
MAX_SESSION_MESSAGE = 8192
MAX_CONTENT = 96 * 1024


def relay_key_id(relay_public: bytes) -> bytes:
    return hashlib.sha256(encode_key(KEY_ED25519, relay_public)).digest()[:KEY_ID_LEN]


def access_key(profile_key: bytes) -> bytes:
    """The unidentified-access key: whoever holds the profile key (the account's own devices
    and the contacts it shared it with) can derive it; the relay stores only a hash."""
    if len(profile_key) != 32:
        raise ValueError("a profile key is 32 bytes")
    return hkdf(profile_key, salt=None, info=LABEL_ACCESS_KEY, length=ACCESS_KEY_LEN)


@dataclass(frozen=True, slots=True)
class SenderCertificate:
    key_id: bytes
    sender: Address
    identity_key: bytes  # X25519, raw
    expires_at: int  # ms since the epoch
    body: bytes
    signature: bytes

    @classmethod
    def decode(cls, data: bytes) -> SenderCertificate:
        if len(data) != CERTIFICATE_LEN:
            raise DecodeError("sender certificate has the wrong length")
        body, signature = data[: -sign.SIGNATURE_LEN], data[-sign.SIGNATURE_LEN :]
        r = Reader(body)
        if r.u8() != WIRE_VERSION:
            raise DecodeError("unsupported sender certificate version")
        key_id = r.raw(KEY_ID_LEN)
        account_id = r.raw(16).hex()
        device_id = r.u32()
        identity_key = r.key(KEY_X25519)
        expires_at = r.u64()
        r.end()
        if device_id < 1:
            raise DecodeError("sender certificate names device 0")
        return cls(key_id, Address(account_id, device_id), identity_key, expires_at, body, signature)

    def verify(self, trusted_relay_keys: Iterable[bytes], not_after_ms: int) -> None:
        """Check the relay's signature under a trusted key and that the certificate had not
        expired at `not_after_ms` (when the relay received the envelope)."""
        key = next((k for k in trusted_relay_keys if relay_key_id(k) == self.key_id), None)
        if key is None:
            raise CertificateError("sender certificate is signed by a relay key this device does not trust")
        try:
            sign.verify(key, LABEL_SENDER_CERTIFICATE, self.body, self.signature)
        except BadSignatureError:
            raise CertificateError("sender certificate signature does not verify") from None
        if self.expires_at < not_after_ms:
            raise CertificateError("sender certificate had expired when the message reached the relay")


def certificate_body(key_id: bytes, sender: Address, identity_key: bytes, expires_at: int) -> bytes:
    """What a relay signs (the relay has its own copy of this encoder; tests use this one)."""
    return (
        Writer().u8(WIRE_VERSION).raw(key_id).raw(sender.encode()).key(KEY_X25519, identity_key).u64(expires_at).bytes()
    )


def endorsed_keys(trusted: Iterable[bytes], chain: list[tuple[bytes, bytes | None]]) -> list[bytes]:
    """The relay keys of `chain` ([(public, endorsement by the previous key)], oldest
    first) that a trusted key reaches through valid endorsements. Never a key that only
    the relay vouches for: an unendorsed new key needs the user to pin it."""
    trusted_set = set(trusted)
    out = list(trusted_set)
    for (previous, _), (public, endorsement) in zip(chain, chain[1:], strict=False):
        if previous in trusted_set and public not in trusted_set and endorsement is not None:
            try:
                sign.verify(previous, LABEL_RELAY_KEY, encode_key(KEY_ED25519, public), endorsement)
            except BadSignatureError:
                continue
            trusted_set.add(public)
            out.append(public)
    return out


# The most bytes a session message's kind adds to a plain 0x04 ratchet message: a PQ step's
# ciphertext and key (2,280), more than a prekey prefix (1,168; the initiator's first chain
# announces no KEM key, so the two never meet in one message).
KIND_HEADROOM = max(session.PREKEY_PREFIX_LEN, ratchet.PQ_CT_PART_LEN + ratchet.PQ_PK_PART_LEN)


def bucket(size: int) -> int:
    for b in SEALED_BUCKETS:
        if size <= b:
            return b
    raise ValueError("message too large for a sealed envelope")


def kind_extra(session_message: bytes) -> int:
    """The bytes of `session_message` that its kind adds (prekey prefix, KEM parts); 0 for
    anything that does not parse (the bucket then errs on the large side)."""
    try:
        extra = 0
        inner = session_message
        if session.message_type(session_message) == session.MSG_PREKEY:
            extra, inner = session.PREKEY_PREFIX_LEN, session_message[session.PREKEY_PREFIX_LEN :]
        parts = ratchet.read_header(inner)[4]
    except ProtocolError:
        return 0
    if parts is not None:
        extra += len(parts.encode()) - 1
    return extra


def envelope_bucket(size: int, session_message: bytes) -> int:
    """The bucket of an envelope of `size` bytes: as if its session message had the largest
    kind-specific parts, capped at the largest bucket (where every kind meets anyway)."""
    if size > SEALED_BUCKETS[-1]:
        raise ValueError("message too large for a sealed envelope")
    as_if = size - kind_extra(session_message) + KIND_HEADROOM
    return bucket(min(as_if, SEALED_BUCKETS[-1]))


def _info(recipient: Address) -> bytes:
    return LABEL_SEALED_ENVELOPE + recipient.encode()


_HEADER = bytes((WIRE_VERSION, KIND_SEALED))


def seal_envelope(
    recipient: Address, recipient_key: bytes, certificate: bytes, session_message: bytes, content_ciphertext: bytes
) -> bytes:
    """The sealed envelope for one device, padded to its bucket. (HPKE draws its ephemeral
    key from the OS: `cryptography` takes no RNG, so this is the one non-injectable draw.)"""
    inner = Writer().u8(WIRE_VERSION).var(certificate).var(session_message).var(content_ciphertext).bytes()
    size = len(_HEADER) + hpke.OVERHEAD + len(inner)
    inner += bytes(envelope_bucket(size, session_message) - size)
    return _HEADER + hpke.seal(recipient_key, inner, _info(recipient))


@dataclass(frozen=True, slots=True)
class Unsealed:
    certificate: SenderCertificate
    session_message: bytes
    content_ciphertext: bytes


def is_sealed(envelope: bytes) -> bool:
    return envelope[:2] == _HEADER


def open_envelope(data: bytes, recipient: Address, keys: hpke.HpkeKeyPair) -> Unsealed:
    """Open a sealed envelope addressed to this device. Any failure is a uniform
    DecodeError/DecryptionError; the certificate is parsed but not yet verified."""
    if len(data) not in SEALED_BUCKETS or not is_sealed(data):
        raise DecodeError("not a sealed envelope of a bucket size")
    try:
        inner = keys.open(data[len(_HEADER) :], _info(recipient))
    except AuthenticationError:
        raise DecryptionError() from None
    r = Reader(inner)
    if r.u8() != WIRE_VERSION:
        raise DecodeError("unsupported sealed envelope version")
    certificate = SenderCertificate.decode(r.var(max_len=CERTIFICATE_LEN))
    session_message = r.var(max_len=MAX_SESSION_MESSAGE)
    content = r.var(max_len=MAX_CONTENT)
    if any(r.rest()):
        raise DecodeError("sealed envelope padding is not zero")
    return Unsealed(certificate, session_message, content)
