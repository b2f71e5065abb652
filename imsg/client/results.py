"""What `Client` methods return: frozen dataclasses, no behaviour beyond building them.

Every service of the client returns these (or store records, imsg.protocol.stores), and
the CLI renders them as text or JSON. `Problem` is the one kind the client collects rather
than returns: envelopes and background work that failed without failing the call
(`Client.problems`, filled by receive, read and cleared by callers).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from imsg.crypto import stream
from imsg.protocol.stores import StoredAttachment, StoredMessage

# --- account and devices ---


@dataclass(frozen=True, slots=True)
class WhoAmI:
    account_id: str
    handle: str
    name: str
    device_id: int
    relay: str
    fingerprint: str
    devices: int


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    device_id: int
    name: str
    fingerprint: str
    added_at: int
    this_device: bool


@dataclass(frozen=True, slots=True)
class Pairing:
    code: str
    channel: bytes
    secret: bytes
    expires_at: int


# --- messages ---


@dataclass(frozen=True, slots=True)
class SentMessage:
    id: str
    to: str
    sent_at: int
    devices: int
    sealed: bool = False  # the relay was not told who sent it (sealed sender)
    # Why not sealed ("" when sealed): no_access_key, no_sealed_key or access_denied.
    sealed_reason: str = ""


@dataclass(frozen=True, slots=True)
class AttachmentInfo:
    id: str  # the relay's blob id
    name: str  # as the sender named it (sanitised when saved)
    size: int  # plaintext bytes
    type: str  # the sender's claim
    saved_path: str = ""

    @classmethod
    def from_stored(cls, a: StoredAttachment) -> AttachmentInfo:
        return cls(a.blob_id, a.name, plain_size(a.size), a.content_type, a.saved_path)


@dataclass(frozen=True, slots=True)
class Message:
    """A message as a reader sees it (receive, watch, history)."""

    id: str
    sender: str  # handle
    to: str  # handle
    text: str
    sent_at: int  # ms, sender's clock
    direction: str  # "in" | "out"
    peer: str  # the other party's handle
    attachments: tuple[AttachmentInfo, ...] = ()

    @classmethod
    def from_stored(cls, m: StoredMessage, attachments: Iterable[StoredAttachment] = ()) -> Message:
        infos = tuple(AttachmentInfo.from_stored(a) for a in attachments)
        return cls(
            m.message_id, m.sender_handle, m.recipient_handle, m.text, m.sent_at, m.direction, m.peer_handle, infos
        )


@dataclass(frozen=True, slots=True)
class Draft:
    id: str  # blob id: pass to send(drafts=[...])
    name: str
    size: int
    type: str
    expires_at: int


@dataclass(frozen=True, slots=True)
class Problem:
    """An envelope that could not be accepted (tampered, replayed, untrusted sender).
    It is acked and dropped — it can never become readable — and reported."""

    message_id: str
    code: str
    message: str


# --- contacts and trust ---


@dataclass(frozen=True, slots=True)
class ContactInfo:
    handle: str
    account_id: str
    state: str  # verified | unverified | changed
    verified: bool
    devices: int
    fingerprint: str
    held: int
    in_contacts: bool = False
    nickname: str = ""  # the name we gave them
    profile_name: str = ""  # the name they share with us (their profile), if any
    sharing: bool = False  # they hold our current profile key
    handle_verified: bool = True  # False: the holder only claimed the handle (relay without verifier)


@dataclass(frozen=True, slots=True)
class Verification:
    handle: str
    safety_number: str
    verified: bool
    changed: bool


@dataclass(frozen=True, slots=True)
class LookupResult:
    handle: str  # canonical
    reachable: bool
    verified: bool  # the relay verified the holder's claim (False when not reachable)
    account_id: str = ""


# --- profiles ---


@dataclass(frozen=True, slots=True)
class OwnProfile:
    name: str
    photo_type: str  # "" without a photo
    photo_size: int
    revision: int
    share: str  # contacts | ask | off
    published: bool  # the relay holds this revision
    shared_with: tuple[str, ...]  # handles holding our current profile key


@dataclass(frozen=True, slots=True)
class SavedPhoto:
    path: Path
    type: str
    size: int


# --- backups and sealed sender ---


@dataclass(frozen=True, slots=True)
class BackupStatus:
    on: bool
    last_at: int | None  # our last successful upload (ms)
    size: int | None  # its size in bytes
    next_at: int | None  # when the next automatic backup is due
    last_error: str | None
    relay_size: int | None  # what the relay holds now (None: nothing)
    relay_updated_at: int | None


@dataclass(frozen=True, slots=True)
class BackupResult:
    size: int
    messages: int
    contacts: int
    at: int


@dataclass(frozen=True, slots=True)
class SealedStatus:
    sealed_only: bool
    allow_anyone: bool
    access_key_set: bool  # at the relay (None-safe: False when unknown)
    relay_keys: tuple[str, ...]  # key ids (hex) this home trusts
    certificate_expires_at: int  # 0 when none is held


def plain_size(ciphertext_size: int) -> int:
    """An attachment's plaintext size from its ciphertext size (0 if none could give it)."""
    try:
        return stream.plaintext_length(ciphertext_size)
    except ValueError:
        return 0
