"""Sessions between two devices: PQXDH set-up, prekey messages, and the record of the
current and previous ratchet states for one peer device.

Wire forms (all authenticated by the ratchet AEAD or, for the prekey fields, by SK):

    RatchetMessage = header || ciphertext                       (type 0x02, see ratchet)
    PreKeyMessage  = version | 0x03 | Enc(IK_A) | Enc(EK_A) | SPK id (4) | OPK id (4, 0 = none)
                     | KEM id (4) | KEM ciphertext (1088) | RatchetMessage

The whole prekey prefix (everything before the inner RatchetMessage) is part of the inner
message's associated data, so no byte of a prekey message can be altered, and the inner
message cannot be lifted out and delivered alone.

The initiator sends prekey messages until it has received one message in the session,
as in Signal: until then the responder may not have the session yet.
"""

from __future__ import annotations

import struct
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from imsg.crypto import dh, kem
from imsg.crypto.errors import CryptoError
from imsg.crypto.labels import LABEL_MESSAGE_AD
from imsg.protocol import pqxdh
from imsg.protocol.consts import MAX_PREVIOUS_SESSIONS, WIRE_VERSION
from imsg.protocol.encoding import KEY_X25519, Reader, Writer, encode_key, is_canonical_x25519
from imsg.protocol.errors import (
    DecodeError,
    DecryptionError,
    DuplicateMessageError,
    NoSessionError,
    RemoteProtocolError,
    TooFarAheadError,
    UnknownPreKeyError,
    UntrustedIdentityError,
)
from imsg.protocol.identity import DeviceKeys, Rng
from imsg.protocol.prekeys import KemPreKey, OneTimePreKey, PreKeyBundle, SignedPreKey
from imsg.protocol.ratchet import MSG_RATCHET, MSG_RATCHET_PQ, RatchetState

MSG_PREKEY = 0x03
_RECORD_VERSION = 2  # 2: the ratchet states may carry PQ ratchet state (ratchet state v2)
_PREKEY_FIXED = struct.Struct(">BB33s33sIII")
_PREKEY_LEN = PREKEY_PREFIX_LEN = _PREKEY_FIXED.size + kem.CIPHERTEXT_LEN


@dataclass(frozen=True, slots=True, order=True)
class Address:
    """A device of an account, as the relay addresses it."""

    account_id: str  # 32 hex characters
    device_id: int

    def encode(self) -> bytes:
        return bytes.fromhex(self.account_id) + struct.pack(">I", self.device_id)

    def __str__(self) -> str:
        return f"{self.account_id}.{self.device_id}"


def associated_data(sender: Address, sender_ik: bytes, recipient: Address, recipient_ik: bytes) -> bytes:
    return (
        LABEL_MESSAGE_AD
        + sender.encode()
        + encode_key(KEY_X25519, sender_ik)
        + recipient.encode()
        + encode_key(KEY_X25519, recipient_ik)
    )


class Session:
    """One ratchet plus what the session needs around it."""

    __slots__ = ("ratchet", "remote_identity_key", "base_key", "pending")

    def __init__(
        self,
        ratchet: RatchetState,
        remote_identity_key: bytes,
        base_key: bytes,
        pending: pqxdh.Initiation | None,
    ):
        self.ratchet = ratchet
        self.remote_identity_key = remote_identity_key
        self.base_key = base_key  # EK_A: identifies the session on both sides
        self.pending = pending  # initiator only, until the first message is received

    def encrypt(self, plaintext: bytes, rng: Rng, now: int | None = None) -> bytes:
        """`now` (ms) drives the time half of the PQ ratchet's schedule (§5a)."""
        p = self.pending
        if p is None:
            return self.ratchet.encrypt(plaintext, rng, now=now)
        prefix = (
            _PREKEY_FIXED.pack(
                WIRE_VERSION,
                MSG_PREKEY,
                encode_key(KEY_X25519, p.identity_key),
                encode_key(KEY_X25519, p.base_key),
                p.signed_prekey_id,
                p.one_time_prekey_id or 0,
                p.kem_prekey_id,
            )
            + p.kem_ciphertext
        )
        return prefix + self.ratchet.encrypt(plaintext, rng, extra_ad=prefix, now=now)

    def decrypt_ratchet(self, message: bytes, now: int, extra_ad: bytes = b"") -> bytes:
        plaintext = self.ratchet.decrypt(message, now, extra_ad)
        self.pending = None  # the peer has the session: plain ratchet messages from now on
        return plaintext

    def encode(self) -> bytes:
        w = Writer().var(self.ratchet.encode()).raw(self.remote_identity_key).raw(self.base_key)
        p = self.pending
        if p is None:
            w.u8(0)
        else:
            w.u8(1).raw(p.identity_key).raw(p.base_key).u32(p.signed_prekey_id)
            w.u32(p.one_time_prekey_id or 0).u32(p.kem_prekey_id).raw(p.kem_ciphertext)
        return w.bytes()

    @classmethod
    def decode(cls, r: Reader) -> Session:
        ratchet = RatchetState.decode(r.var())
        remote_ik, base_key = r.raw(32), r.raw(32)
        pending = None
        if r.u8():
            ik, bk, spk, opk, kid = r.raw(32), r.raw(32), r.u32(), r.u32(), r.u32()
            pending = pqxdh.Initiation(ik, bk, spk, opk or None, kid, r.raw(kem.CIPHERTEXT_LEN))
        return cls(ratchet, remote_ik, base_key, pending)


class SessionRecord:
    """The current session with a peer device, and a few previous ones so that messages
    in flight when a session was replaced still decrypt."""

    __slots__ = ("current", "previous")

    def __init__(self, current: Session | None = None, previous: list[Session] | None = None):
        self.current = current
        self.previous = previous or []

    def promote(self, session: Session) -> None:
        if session is self.current:
            return
        sessions = [s for s in [self.current, *self.previous] if s is not None and s is not session]
        self.current = session
        self.previous = sessions[:MAX_PREVIOUS_SESSIONS]

    def find(self, base_key: bytes) -> Session | None:
        for s in [self.current, *self.previous]:
            if s is not None and s.base_key == base_key:
                return s
        return None

    def purge_skipped(self, now: int) -> bool:
        """Erase expired skipped message keys from every state, current and previous; True
        if anything went (then the record must be saved)."""
        changed = False
        for s in [self.current, *self.previous]:
            if s is not None and s.ratchet.purge_skipped(now):
                changed = True
        return changed

    def encode(self) -> bytes:
        sessions = [s for s in [self.current, *self.previous] if s is not None]
        w = Writer().u8(_RECORD_VERSION).u8(len(sessions))
        for s in sessions:
            w.var(s.encode())
        return w.bytes()

    @classmethod
    def decode(cls, data: bytes) -> SessionRecord:
        r = Reader(data)
        # Version 1 records hold classical ratchet states; each state names its own
        # version, so both decode the same way (and are re-encoded as version 2).
        if r.u8() not in (1, _RECORD_VERSION):
            raise DecodeError("unsupported session record version")
        sessions = [Session.decode(Reader(r.var())) for _ in range(r.u8())]
        r.end()
        return cls(sessions[0] if sessions else None, sessions[1:])


class PreKeyStore(Protocol):
    """The responder's private prekeys (see stores.PreKeyStore for the full interface)."""

    def get_signed_prekey(self, key_id: int) -> SignedPreKey | None: ...
    def get_kem_prekey(self, key_id: int) -> KemPreKey | None: ...
    def get_one_time_prekey(self, key_id: int) -> OneTimePreKey | None: ...


@dataclass(frozen=True, slots=True)
class Decrypted:
    """The result of decrypting one session message. `record` must be saved, and the
    one-time prekeys named here removed, in the same transaction as the message."""

    plaintext: bytes
    record: SessionRecord
    used_one_time_prekey: int | None = None
    used_kem_prekey: int | None = None  # one-time KEM prekey to remove (never the last resort)
    new_session: bool = False


def initiate(
    local: DeviceKeys,
    local_address: Address,
    remote_address: Address,
    remote_identity_key: bytes,
    remote_signing_key: bytes,
    bundle: PreKeyBundle,
    rng: Rng,
) -> Session:
    """Start a session with a device whose keys come from a trusted device list."""
    bundle.verify(remote_signing_key)
    try:
        sk, init = pqxdh.initiate(local, remote_identity_key, bundle, rng)
    except CryptoError:  # a low-order X25519 key or a malformed ML-KEM key, even if signed
        raise RemoteProtocolError("peer identity key or prekey bundle holds an unusable key") from None
    ratchet = RatchetState.initiator(
        sk,
        bundle.signed_prekey,
        ad_send=associated_data(local_address, local.identity.public, remote_address, remote_identity_key),
        ad_recv=associated_data(remote_address, remote_identity_key, local_address, local.identity.public),
    )
    return Session(ratchet, remote_identity_key, init.base_key, init)


def message_type(message: bytes) -> int:
    if len(message) < 2 or message[0] != WIRE_VERSION or message[1] not in (MSG_RATCHET, MSG_RATCHET_PQ, MSG_PREKEY):
        raise DecodeError("not a version 1 session message")
    return message[1]


def decrypt(
    record: SessionRecord | None,
    message: bytes,
    *,
    local: DeviceKeys,
    local_address: Address,
    remote_address: Address,
    remote_identity_key: bytes,
    prekeys: PreKeyStore,
    now: int,
) -> Decrypted:
    """Decrypt a session message from `remote_address`, whose identity key the caller took
    from a device list signed by the pinned account key. On any failure nothing changes:
    the returned record is a new object and `record` is only mutated on success."""
    kind = message_type(message)
    if kind in (MSG_RATCHET, MSG_RATCHET_PQ):
        if record is None:
            raise NoSessionError("no session with this device")
        return _decrypt_with_record(record, message, now)

    if len(message) < _PREKEY_LEN:
        raise DecodeError("prekey message too short")
    _, _, ik_tagged, ek_tagged, spk_id, opk_id, kem_id = _PREKEY_FIXED.unpack_from(message)
    kem_ct = message[_PREKEY_FIXED.size : _PREKEY_LEN]
    prefix, inner = message[:_PREKEY_LEN], message[_PREKEY_LEN:]
    if ik_tagged[0] != KEY_X25519 or ek_tagged[0] != KEY_X25519:
        raise DecodeError("prekey message keys must be x25519")
    identity_key, base_key = ik_tagged[1:], ek_tagged[1:]
    if not is_canonical_x25519(identity_key) or not is_canonical_x25519(base_key):
        # X25519 ignores the top bit and reduces mod p, so a non-canonical base key would
        # give the same SK: the relay could alter the session's id undetected.
        raise DecodeError("prekey message keys must be canonical x25519 encodings")
    if identity_key != remote_identity_key:
        raise UntrustedIdentityError("prekey message identity key is not the sender's signed device key")

    if record is not None:
        existing = record.find(base_key)
        if existing is not None:
            # A repeat prekey message of a session we already have (the initiator sends
            # them until it hears back): an ordinary ratchet message inside.
            return _decrypt_with_record(record, inner, now, prefer=existing, extra_ad=prefix)

    spk = prekeys.get_signed_prekey(spk_id)
    kpk = prekeys.get_kem_prekey(kem_id)
    opk = prekeys.get_one_time_prekey(opk_id) if opk_id else None
    if spk is None or kpk is None or (opk_id and opk is None):
        # A one-time key already used means this is a replay of a handshake we consumed.
        raise UnknownPreKeyError()
    init = pqxdh.Initiation(identity_key, base_key, spk_id, opk_id or None, kem_id, kem_ct)
    try:
        sk = pqxdh.respond(local, init, spk, kpk, opk)
    except CryptoError:
        raise DecryptionError() from None
    ratchet = RatchetState.responder(
        sk,
        dh.KeyPair(spk.private),
        ad_send=associated_data(local_address, local.identity.public, remote_address, identity_key),
        ad_recv=associated_data(remote_address, identity_key, local_address, local.identity.public),
    )
    session = Session(ratchet, identity_key, base_key, None)
    try:
        plaintext = session.decrypt_ratchet(inner, now, prefix)
    except TooFarAheadError:  # uniform: a first message has no business skipping keys
        raise DecryptionError() from None
    new_record = SessionRecord(record.current, list(record.previous)) if record else SessionRecord()
    new_record.promote(session)
    return Decrypted(
        plaintext,
        new_record,
        used_one_time_prekey=opk_id or None,
        used_kem_prekey=None if kpk.last_resort else kem_id,
        new_session=True,
    )


def _decrypt_with_record(
    record: SessionRecord,
    message: bytes,
    now: int,
    prefer: Session | None = None,
    extra_ad: bytes = b"",
) -> Decrypted:
    candidates = [s for s in [prefer, record.current, *record.previous] if s is not None]
    seen: set[int] = set()
    duplicate = False
    for session in candidates:
        if id(session) in seen:
            continue
        seen.add(id(session))
        # Decrypt a copy so that a failure leaves the stored session untouched.
        trial = Session.decode(Reader(session.encode()))
        try:
            plaintext = trial.decrypt_ratchet(message, now, extra_ad)
        except DuplicateMessageError:
            duplicate = True
            continue
        except RemoteProtocolError:
            continue
        new_record = SessionRecord(record.current, list(record.previous))
        # Replace the session by its advanced copy, and make it current.
        new_record.current = trial if new_record.current is session else new_record.current
        new_record.previous = [trial if s is session else s for s in new_record.previous]
        new_record.promote(trial)
        return Decrypted(plaintext, new_record)
    if duplicate:
        raise DuplicateMessageError()
    raise DecryptionError()


class SessionRecords(Protocol):
    """What `purge_expired_skipped_keys` needs of a store (see stores.SessionStore)."""

    def session_addresses(self) -> list[Address]: ...
    def load_session(self, address: Address) -> bytes | None: ...
    def save_session(self, address: Address, record: bytes) -> None: ...
    def transaction(self) -> AbstractContextManager[None]: ...


def purge_expired_skipped_keys(store: SessionRecords, now: int) -> int:
    """Erase skipped message keys past MAX_SKIPPED_KEY_AGE_MS from every stored session
    record, current and previous states alike, and return how many records changed. Run on
    every open of a store: an idle session would otherwise keep them until it next
    decrypts, and whoever reads the store could open recorded ciphertext with them. A record
    that does not decode is left alone (the receive path reports it)."""
    changed = 0
    for address in store.session_addresses():
        if not _purged(store.load_session(address), now):
            continue  # the common case: read only, no write lock taken
        with store.transaction():  # again under the lock: a send may have saved it since
            record = _purged(store.load_session(address), now)
            if record is not None:
                store.save_session(address, record.encode())
                changed += 1
    return changed


def _purged(raw: bytes | None, now: int) -> SessionRecord | None:
    """The record with its expired skipped keys gone, or None if it had none (or does not
    decode: the receive path reports that)."""
    if raw is None:
        return None
    try:
        record = SessionRecord.decode(raw)
    except DecodeError:
        return None
    return record if record.purge_skipped(now) else None
