"""The receive rules: what a device accepts from an envelope, and how it keeps it.

Sans-I/O like the rest of this package: `now` is a parameter, storage goes through the
store Protocols, and fetching a device list from the relay is the caller's business. The
client's receive path (imsg/client/inbox.py) runs these rules, and so does the tests'
two-party helper (tests/unit/protocol_helpers.py), so the unit tests exercise the
shipping path. For one envelope, in order:

1. `from_own_account`: an envelope from our own account is a sync copy, a note to self or
   a profile change from another of our devices; one that claims to come from this very
   device is rejected (nobody but this device holds its keys).
2. `needs_device_list`: if the signed device list held for the sender's account does not
   name the sender device, the caller fetches the account's current signed list once.
3. `sender_device`: the sender device must be in its account's signed device list (so the
   relay cannot add a device), and a sealed envelope's certificate must name that device's
   identity key (`check_certified_identity`).
4. `accept`: decrypt the session message, let the caller keep what it carries, then save
   the advanced session record and remove the used one-time prekeys — in ONE transaction:
   any failure, in decrypting or in what the caller checks and keeps, changes nothing (the
   session is not advanced, no prekey is consumed, nothing is stored).
5. Inside step 4, before anything is kept: `open_content` (digest, AEAD, strict decoding),
   `check_content_id` (the content names the relay envelope's message id, so the relay
   cannot replay content under another id; a sync copy from our own account travels under
   a fresh id of its own) and `check_kind` (sync and profile content only from our own
   devices).

Before all of it, `is_own_decoy`: the sealed envelope a send to our own account carries
for the sending device itself (the relay wants every device addressed) is dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol, TypeVar

from imsg.crypto.kdf import constant_time_equal
from imsg.protocol import envelope as env
from imsg.protocol import session as sess
from imsg.protocol.content import KIND_SYNC, KIND_TEXT, Content
from imsg.protocol.errors import CertificateError, RemoteProtocolError, UntrustedIdentityError
from imsg.protocol.identity import DeviceEntry, DeviceKeys, DeviceList, account_id_for
from imsg.protocol.session import Address
from imsg.protocol.stores import PreKeyStore, SessionStore

T = TypeVar("T")


class ReceivingStore(SessionStore, PreKeyStore, Protocol):
    """What accepting a session message reads and writes: sessions and prekeys, grouped
    in a transaction."""

    def transaction(self) -> AbstractContextManager[None]: ...


# --- who sent it ---


def from_own_account(sender: Address, local: Address) -> bool:
    """True if the envelope comes from another device of our own account."""
    if sender.account_id != local.account_id:
        return False
    if sender.device_id == local.device_id:
        raise RemoteProtocolError("envelope claims to come from this very device")
    return True


def needs_device_list(devices: DeviceList | None, sender: Address) -> bool:
    """True if the list held (None: none) does not name the sender device: fetch the
    account's signed list (once) before `sender_device`."""
    return devices is None or devices.device(sender.device_id) is None


def sender_device(devices: DeviceList, sender: Address) -> DeviceEntry:
    """The sender device's entry in its account's signed device list (verified by the
    caller under the account key it pinned), or UntrustedIdentityError."""
    entry = devices.device(sender.device_id)
    if entry is None or account_id_for(devices.account_key) != sender.account_id:
        raise UntrustedIdentityError("sender device is not in its account's signed device list")
    return entry


def check_certified_identity(certified: bytes | None, identity_key: bytes) -> None:
    """A sealed envelope's certificate must name the identity key the sender's signed device
    list holds (and so the one the session authenticates). None: an identified envelope."""
    if certified is not None and not constant_time_equal(certified, identity_key):
        raise CertificateError("sender certificate names another identity key than the sender device's")


# --- the session message ---


def decrypt(
    store: ReceivingStore,
    message: bytes,
    *,
    local: DeviceKeys,
    local_address: Address,
    remote_address: Address,
    remote_identity_key: bytes,
    now: int,
) -> sess.Decrypted:
    """Decrypt a session message from `remote_address` against the stored record. Writes
    nothing: `accept` commits."""
    stored = store.load_session(remote_address)
    return sess.decrypt(
        sess.SessionRecord.decode(stored) if stored else None,
        message,
        local=local,
        local_address=local_address,
        remote_address=remote_address,
        remote_identity_key=remote_identity_key,
        prekeys=store,
        now=now,
    )


def accept(
    store: ReceivingStore,
    message: bytes,
    *,
    local: DeviceKeys,
    local_address: Address,
    remote_address: Address,
    remote_identity_key: bytes,
    now: int,
    then: Callable[[bytes], T],
) -> tuple[T, sess.Decrypted]:
    """Decrypt, run `then(plaintext)` (the caller's checks, and its writes of what the
    message carries: raise to keep nothing), then save the advanced session record and
    remove the one-time prekeys it used. One transaction for all of it."""
    with store.transaction():
        result = decrypt(
            store,
            message,
            local=local,
            local_address=local_address,
            remote_address=remote_address,
            remote_identity_key=remote_identity_key,
            now=now,
        )
        kept = then(result.plaintext)
        store.save_session(remote_address, result.record.encode())
        if result.used_one_time_prekey is not None:
            store.remove_one_time_prekey(result.used_one_time_prekey)
        if result.used_kem_prekey is not None:
            store.remove_kem_prekey(result.used_kem_prekey)
    return kept, result


# --- the content ---


def open_content(plaintext: bytes, content_ciphertext: bytes) -> Content:
    """The content a session message's key package opens (digest, then AEAD, then strict
    decoding)."""
    return Content.decode(env.open_content(plaintext, content_ciphertext))


def check_content_id(content: Content, message_id: str, *, own: bool = False) -> None:
    """The content names the envelope's message id, so the relay cannot replay content
    under another id. Except a sync copy from our own account: it travels under a fresh
    random id (so the relay cannot link it to the message it copies) and is stored under
    the content's id; replaying it gains nothing (the ratchet refuses a used message key,
    and the store keeps one message per id)."""
    if own and content.kind == KIND_SYNC:
        return
    if content.message_id != message_id:
        raise RemoteProtocolError("content id does not match the envelope's message id")


def is_own_decoy(sealed_sender: Address | None, local: Address) -> bool:
    """A sealed envelope whose certificate names this very device: the decoy our own sealed
    sends to our account carry for the sending device. Acked and dropped unread."""
    return sealed_sender is not None and sealed_sender == local


def check_kind(content: Content, *, own: bool) -> None:
    """Sync copies and profile changes come only from our own devices."""
    if not own and content.kind != KIND_TEXT:
        raise RemoteProtocolError("sync messages are accepted only from our own devices")
