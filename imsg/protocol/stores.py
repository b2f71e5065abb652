"""Store interfaces, one per record kind (as libsignal's IdentityKeyStore, PreKeyStore,
SessionStore...). `imsg.store.memory` is the reference implementation the unit tests
use; `imsg.store.sqlite` is what a home directory holds.

`Store.transaction()` groups writes: the client saves the advanced ratchet state, the
consumed prekeys and the received message in one transaction, before it acks the
envelope at the relay, so a crash at any point neither loses a message nor reuses a key.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from imsg.protocol.prekeys import KemPreKey, OneTimePreKey, SignedPreKey
from imsg.protocol.session import Address


@dataclass(frozen=True, slots=True)
class LocalAccount:
    """This home's account and device."""

    account_id: str
    handle: str
    name: str
    account_public: bytes
    account_private: bytes | None  # None on a linked device that was not given it
    device_id: int
    identity_private: bytes  # X25519
    signing_private: bytes  # Ed25519
    device_list: bytes  # our account's signed device list, as last published
    relay_url: str
    token: str  # relay bearer token for this device
    created_at: int
    # 32 random bytes shared by all of the account's devices: it encrypts the name and
    # photo on the relay and derives the unidentified-access key for sealed sender.
    profile_key: bytes = b""


@dataclass(frozen=True, slots=True)
class Contact:
    account_id: str
    handle: str
    account_key: bytes  # pinned (trust on first use, verified with the safety number)
    device_list: bytes  # last signed device list that verified under `account_key`
    verified: bool = False
    first_seen: int = 0
    # "ok": the pinned identity for its handle. "changed": the relay now maps the handle
    # to this (new) account; nothing is sent to it until the user trusts it. "replaced":
    # an identity the user has moved on from (kept for its history).
    status: str = "ok"
    profile_key: bytes = b""  # the contact's profile key, once they shared it with us
    # The address book (`imsg contacts add`): who the `contacts` share policy reaches, and
    # the name the user gave them. A Contact row exists for everyone we exchanged a message
    # with; only rows with in_contacts=True are "in your contacts".
    in_contacts: bool = False
    nickname: str = ""
    # The revision of their profile they last announced (it travels with their key); a
    # cached profile of a lower revision is refetched.
    profile_revision: int = 0
    # Our answer for sharing our name and photo with them: "" (not asked), "yes", "no".
    share_profile: str = ""
    # Our profile key as last given to them (b"" if never): what they can read. Every
    # device learns it from the sync copy of the message that carried it.
    shared_profile_key: bytes = b""
    # Their unidentified-access key (16 bytes), as their last message gave it: every message
    # carries the sender's, so a reply and everything after go sealed without either side
    # sharing a name or photo (issue 12). b"" until they wrote to us.
    access_key: bytes = b""


@dataclass(frozen=True, slots=True)
class StoredMessage:
    message_id: str
    peer_account_id: str  # the other party of the conversation
    peer_handle: str
    direction: str  # "in" or "out"
    sender_handle: str
    recipient_handle: str
    text: str
    sent_at: int  # ms, sender's clock
    stored_at: int  # ms, our clock
    sender_device: int = 0


@dataclass(frozen=True, slots=True)
class Conversation:
    peer_account_id: str
    peer_handle: str
    last_text: str
    last_at: int
    messages: int


class AccountStore(Protocol):
    def load_account(self) -> LocalAccount | None: ...
    def save_account(self, account: LocalAccount) -> None: ...


class PreKeyStore(Protocol):
    def get_signed_prekey(self, key_id: int) -> SignedPreKey | None: ...
    def save_signed_prekey(self, key: SignedPreKey) -> None: ...
    def signed_prekeys(self) -> list[SignedPreKey]: ...
    def remove_signed_prekey(self, key_id: int) -> None: ...
    def get_kem_prekey(self, key_id: int) -> KemPreKey | None: ...
    def save_kem_prekey(self, key: KemPreKey) -> None: ...
    def remove_kem_prekey(self, key_id: int) -> None: ...
    def kem_prekey_ids(self) -> list[int]:
        """Ids of every stored ML-KEM prekey (one-time and last-resort), ascending."""
        ...

    def get_one_time_prekey(self, key_id: int) -> OneTimePreKey | None: ...
    def save_one_time_prekey(self, key: OneTimePreKey) -> None: ...
    def remove_one_time_prekey(self, key_id: int) -> None: ...
    def next_prekey_id(self) -> int:
        """A fresh id, never handed out before, for any kind of prekey."""
        ...


class SessionStore(Protocol):
    def load_session(self, address: Address) -> bytes | None: ...
    def save_session(self, address: Address, record: bytes) -> None: ...
    def delete_session(self, address: Address) -> None: ...
    def session_addresses(self) -> list[Address]:
        """Every peer device with a stored session record (for the skipped-key purge)."""
        ...


class ContactStore(Protocol):
    def get_contact(self, account_id: str) -> Contact | None: ...
    def contact_by_handle(self, handle: str) -> Contact | None: ...
    def save_contact(self, contact: Contact) -> None: ...
    def contacts(self) -> list[Contact]: ...
    def reassign_messages(self, old_account_id: str, new_account_id: str) -> None:
        """Move a conversation to a contact's new identity (after the user trusts it)."""
        ...


class MessageStore(Protocol):
    def add_message(self, message: StoredMessage) -> bool:
        """Store a message; False (and no change) if its id is already stored."""
        ...

    def has_message(self, message_id: str) -> bool: ...
    def history(self, peer_account_id: str, limit: int) -> list[StoredMessage]:
        """The newest `limit` messages of a conversation, oldest first."""
        ...

    def conversations(self) -> list[Conversation]: ...
    def unshown(self) -> list[StoredMessage]:
        """Incoming messages stored but not yet handed to a reader (receive/watch), so no
        event is lost when the process stops between storing and printing."""
        ...

    def mark_shown(self, message_ids: list[str]) -> None: ...
    def delete_messages(self, message_ids: list[str]) -> list[str]:
        """Delete messages and their attachment records; return the attachment files that
        were saved for them (the caller removes those files)."""
        ...

    def messages_older_than(self, cutoff_ms: int, limit: int) -> list[str]:
        """Ids of up to `limit` messages whose age, the earlier of `sent_at` (the sender's
        clock) and `stored_at` (ours), is before `cutoff_ms` (retention)."""
        ...


@dataclass(frozen=True, slots=True)
class OutgoingBatch:
    """Envelopes encrypted for one account's devices and not yet accepted by the relay.
    The ratchet state that made them is already saved, so they are re-sent as they are
    (never re-encrypted: that would reuse nothing, but would waste message keys) until
    the relay answers 2xx; the relay de-duplicates on the message id."""

    message_id: str
    account_id: str
    envelopes: tuple[tuple[int, bytes], ...]  # (device id, envelope)
    created_at: int
    # The id the relay sees, when it is not `message_id`: a copy to our own devices goes
    # under a fresh random id (the true one is inside the encrypted content), so the relay
    # cannot link it to the message it copies (issue 12, row 1).
    envelope_id: str = ""
    # Not sent before this time (ms): copies to our own devices wait a random few seconds,
    # so their timing does not link them to the send either.
    not_before: int = 0

    @property
    def relay_id(self) -> str:
        """The message id the relay is given for this batch."""
        return self.envelope_id or self.message_id


@dataclass(frozen=True, slots=True)
class HeldMessage:
    """A message not sent because its recipient's identity changed; `imsg trust` sends it."""

    message_id: str
    handle: str
    text: str
    created_at: int


class HeldStore(Protocol):
    def hold_message(self, message: HeldMessage) -> None: ...
    def held_messages(self, handle: str | None = None) -> list[HeldMessage]: ...
    def release_held(self, message_id: str) -> None: ...


@dataclass(frozen=True, slots=True)
class StoredAttachment:
    message_id: str
    index: int
    blob_id: str
    key: bytes
    digest: bytes
    size: int  # ciphertext length
    name: str
    content_type: str
    saved_path: str = ""  # where `attachment save` wrote it (deleted with the message)


@dataclass(frozen=True, slots=True)
class Upload:
    """An attachment being (or already) uploaded. Saved before the first byte leaves, so
    running the same command again resumes: same key, same blob, only missing parts."""

    blob_id: str
    path: str  # absolute path of the source file
    plain_size: int
    mtime_ns: int
    key: bytes
    size: int  # ciphertext length
    part_size: int
    name: str
    content_type: str
    created_at: int
    expires_at: int
    digest: bytes = b""  # SHA-256(ciphertext), once complete
    complete: bool = False


class AttachmentStore(Protocol):
    def add_attachments(self, attachments: list[StoredAttachment]) -> None: ...
    def attachments(self, message_id: str) -> list[StoredAttachment]: ...
    def set_saved_path(self, message_id: str, index: int, path: str) -> None: ...
    def save_upload(self, upload: Upload) -> None: ...
    def get_upload(self, blob_id: str) -> Upload | None: ...
    def find_upload(self, path: str, plain_size: int, mtime_ns: int) -> Upload | None: ...
    def uploads(self) -> list[Upload]: ...
    def remove_upload(self, blob_id: str) -> None: ...


class OutboxStore(Protocol):
    def add_outgoing(self, batch: OutgoingBatch) -> None: ...
    def outgoing(self) -> list[OutgoingBatch]: ...
    def remove_outgoing(self, message_id: str, account_id: str) -> None: ...


class SettingsStore(Protocol):
    """Small named settings of this home (retention, which handle starts conversations,
    sharing policy...), as text; each feature owns its keys and their format."""

    def get_setting(self, key: str) -> str | None: ...
    def set_setting(self, key: str, value: str | None) -> None:
        """Set a setting; None deletes it."""
        ...

    def settings(self) -> dict[str, str]:
        """Every setting, by key (a backup carries them to a new device)."""
        ...


@dataclass(frozen=True, slots=True)
class OwnHandle:
    """A reachable handle: a phone number or e-mail address this account can be reached at,
    as the relay last reported it (every device lists the same: the handle itself travels
    sealed under the account key, as a handle label, see protocol/discovery.py)."""

    handle: str  # canonical
    handle_id: str  # the relay's id for it: the blinded tag, hex
    state: str  # pending | verified | unverified (claimed under a relay that does not verify)
    receiving: bool  # discovery may find it, so others can start conversations at it
    start_from: bool  # the handle new conversations start from
    added_at: int


class HandleStore(Protocol):
    """This account's own handles, one row per handle."""

    def own_handles(self) -> list[OwnHandle]: ...
    def save_own_handle(self, handle: OwnHandle) -> None: ...
    def remove_own_handle(self, handle: str) -> None: ...


@dataclass(frozen=True, slots=True)
class CachedProfile:
    """A profile (name and photo) as last fetched and checked, for a contact or for our own
    account: what `imsg contacts` shows, and what stays when its owner stops sharing."""

    account_id: str
    revision: int
    name: str
    photo: bytes  # the image file's bytes as the owner set them; never decoded
    fetched_at: int


class ProfileStore(Protocol):
    def cached_profile(self, account_id: str) -> CachedProfile | None: ...
    def save_cached_profile(self, profile: CachedProfile) -> None: ...


class Store(
    AccountStore,
    PreKeyStore,
    SessionStore,
    ContactStore,
    MessageStore,
    OutboxStore,
    HeldStore,
    AttachmentStore,
    SettingsStore,
    ProfileStore,
    HandleStore,
    Protocol,
):
    def transaction(self) -> AbstractContextManager[None]: ...
    def close(self) -> None: ...
    def checkpoint(self) -> None:
        """After deleting: make sure no copy of the deleted rows is left in a journal."""
        ...
