"""Message content: what a sender writes, as the recipient decrypts it.

Content is UTF-8 JSON inside the padded, encrypted content layer — it is parsed only
after the AEAD check has passed. Decoding is strict: unknown kinds, missing fields or
wrong types raise DecodeError, and nothing else escapes (SECURITY-TESTS R9). Later issues
add kinds (sync, receipts, profile keys, attachments) without a new wire version.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict, TypeVar

from imsg.protocol.errors import DecodeError

T = TypeVar("T")

KIND_TEXT = "text"
# A copy of a message this account sent, for the account's other devices. Accepted only
# from the account's own signed devices. It names the recipient's account and key, so the
# other devices can pin the same identity without asking the relay.
KIND_SYNC = "sync"
# The account's own profile key, revision and share policy, for the account's other
# devices after any of them changed (a rotation, a new name or photo, a policy). Accepted
# only from the account's own signed devices; never stored as a message.
KIND_PROFILE = "profile"
# A retry receipt (session repair, docs/PROTOCOL.md §5b): "your device D's message M did
# not decrypt here". Never stored as a message; no text.
KIND_RETRY = "retry"
KINDS = frozenset({KIND_TEXT, KIND_SYNC, KIND_PROFILE, KIND_RETRY})
SHARE_POLICIES = ("contacts", "ask", "off")
MAX_TEXT_LEN = 60_000
ACCESS_KEY_BYTES = 16  # an unidentified-access key (imsg.protocol.sealed.access_key)
MAX_HANDLE_LEN = 254


MAX_ATTACHMENTS = 32
MAX_NAME_LEN = 255
MAX_TYPE_LEN = 127


# --- the JSON shapes on the wire (what `encode` writes; `decode` checks every field) ---


class AttachmentJson(TypedDict):
    blob: str
    key: str  # base64
    digest: str  # base64
    size: int
    name: str
    type: str


class ProfileJson(TypedDict):
    key: str  # base64
    rev: int
    share: NotRequired[str]


class RetryJson(TypedDict):
    id: str  # the message that did not decrypt
    device: int  # the sender device it came from


class SyncJson(TypedDict):
    dest: str
    dest_key: str  # base64


ContentJson = TypedDict(  # functional form: "from" is a keyword
    "ContentJson",
    {
        "v": int,
        "id": str,
        "sent_at": int,
        "kind": str,
        "from": str,
        "to": str,
        "text": str,
        "attachments": NotRequired[list[AttachmentJson]],
        "profile": NotRequired[ProfileJson],
        "sync": NotRequired[SyncJson],
        "retry": NotRequired[RetryJson],
        "access": NotRequired[str],
    },
)


@dataclass(frozen=True, slots=True)
class AttachmentPointer:
    """Where an attachment is and how to open it; travels only inside the E2E content.
    `digest` is SHA-256 of the ciphertext blob and `size` its length: the receiver checks
    both before decrypting a byte (the 2016 iMessage attachment-swap lesson)."""

    blob_id: str  # 32 hex, the relay's
    key: bytes  # 32, the attachment key
    digest: bytes  # 32, SHA-256(ciphertext)
    size: int  # ciphertext length
    name: str  # the sender's file name: untrusted, sanitised before it touches a disk
    content_type: str  # the sender's claim: never used to decode anything

    def to_json(self) -> AttachmentJson:
        return {
            "blob": self.blob_id,
            "key": base64.b64encode(self.key).decode(),
            "digest": base64.b64encode(self.digest).decode(),
            "size": self.size,
            "name": self.name,
            "type": self.content_type,
        }

    @classmethod
    def from_json(cls, doc: object) -> AttachmentPointer:
        if not isinstance(doc, dict):
            raise DecodeError("attachment must be an object")
        blob = _field(doc, "blob", str)
        if len(blob) != 32 or not _is_hex(blob):
            raise DecodeError("attachment blob id must be 32 hex characters")
        size = _field(doc, "size", int)
        if isinstance(size, bool) or not 16 <= size < 1 << 42:
            raise DecodeError("attachment size out of range")
        name, ctype = _field(doc, "name", str), _field(doc, "type", str)
        if len(name) > MAX_NAME_LEN or len(ctype) > MAX_TYPE_LEN:
            raise DecodeError("attachment name or type too long")
        return cls(blob, _b64(doc, "key", 32), _b64(doc, "digest", 32), size, name, ctype)


@dataclass(frozen=True, slots=True)
class ProfileShare:
    """The sender's profile key and the revision of the profile it encrypts, given to a
    recipient (and to the sender's own devices in the sync copy). `share` is set only in a
    `profile` message to the account's own devices: the share policy they follow."""

    key: bytes  # 32, the profile key
    revision: int  # grows with every change of name, photo or key
    share: str = ""

    def to_json(self) -> ProfileJson:
        doc: ProfileJson = {"key": base64.b64encode(self.key).decode(), "rev": self.revision}
        if self.share:
            doc["share"] = self.share
        return doc

    @classmethod
    def from_json(cls, doc: object) -> ProfileShare:
        if not isinstance(doc, dict):
            raise DecodeError("profile must be an object")
        revision = _field(doc, "rev", int)
        if isinstance(revision, bool) or not 0 <= revision < 1 << 63:
            raise DecodeError("profile revision out of range")
        share = doc.get("share", "")
        if share != "" and share not in SHARE_POLICIES:
            raise DecodeError("unknown profile share policy")
        return cls(_b64(doc, "key", 32), revision, share)


@dataclass(frozen=True, slots=True)
class Content:
    message_id: str  # 32 hex: the same id the relay de-duplicates on
    sent_at: int  # ms since the epoch, the sender's clock
    kind: str
    sender_handle: str
    recipient_handle: str
    text: str = ""
    destination: str = ""  # sync: the recipient's account id
    destination_key: bytes = b""  # sync: the recipient's type-tagged account key
    attachments: tuple[AttachmentPointer, ...] = ()
    profile: ProfileShare | None = None
    retry_id: str = ""  # retry: the message id that did not decrypt
    retry_device: int = 0  # retry: the sender device it came from
    # text: the sender's unidentified-access key (16 bytes), so the recipient can answer
    # sealed (issue 12); b"" from older senders. One-way from the profile key: it opens
    # nothing, it only lets the relay accept a sealed envelope for the sender.
    access: bytes = b""

    def encode(self) -> bytes:
        doc: ContentJson = {
            "v": 1,
            "id": self.message_id,
            "sent_at": self.sent_at,
            "kind": self.kind,
            "from": self.sender_handle,
            "to": self.recipient_handle,
            "text": self.text,
        }
        if self.attachments:
            doc["attachments"] = [a.to_json() for a in self.attachments]
        if self.profile is not None:
            doc["profile"] = self.profile.to_json()
        if self.kind == KIND_SYNC:
            doc["sync"] = {"dest": self.destination, "dest_key": base64.b64encode(self.destination_key).decode()}
        if self.kind == KIND_RETRY:
            doc["retry"] = {"id": self.retry_id, "device": self.retry_device}
        if self.access:
            doc["access"] = base64.b64encode(self.access).decode()
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def decode(cls, data: bytes) -> Content:
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise DecodeError("content is not valid json") from None
        if not isinstance(doc, dict) or type(doc.get("v")) is not int or doc["v"] != 1:  # not true, not 1.0
            raise DecodeError("unsupported content version")
        message_id = _field(doc, "id", str)
        if len(message_id) != 32 or not _is_hex(message_id):
            raise DecodeError("content id must be 32 hex characters")
        sent_at = _field(doc, "sent_at", int)
        if isinstance(sent_at, bool) or not 0 <= sent_at < 1 << 63:
            raise DecodeError("content sent_at out of range")
        kind = _field(doc, "kind", str)
        if kind not in KINDS:
            raise DecodeError("unknown content kind")
        sender, recipient = _field(doc, "from", str), _field(doc, "to", str)
        if len(sender) > MAX_HANDLE_LEN or len(recipient) > MAX_HANDLE_LEN:
            raise DecodeError("handle too long")
        text = _field(doc, "text", str)
        if len(text) > MAX_TEXT_LEN:
            raise DecodeError("text too long")
        attachments: tuple[AttachmentPointer, ...] = ()
        if "attachments" in doc:
            raw = _field(doc, "attachments", list)
            if len(raw) > MAX_ATTACHMENTS:
                raise DecodeError("too many attachments")
            attachments = tuple(AttachmentPointer.from_json(a) for a in raw)
        profile = ProfileShare.from_json(doc["profile"]) if "profile" in doc else None
        if kind == KIND_PROFILE and (profile is None or not profile.share):
            raise DecodeError("profile message without a profile and share policy")
        if kind != KIND_PROFILE and profile is not None and profile.share:
            raise DecodeError("a share policy travels only in a profile message")
        if kind == KIND_RETRY:
            if text or attachments or profile is not None:
                raise DecodeError("a retry receipt carries nothing but the failed message")
            retry = _field(doc, "retry", dict)
            failed, device = _field(retry, "id", str), _field(retry, "device", int)
            if len(failed) != 32 or not _is_hex(failed):
                raise DecodeError("retry id must be 32 hex characters")
            if isinstance(device, bool) or not 1 <= device < 1 << 31:
                raise DecodeError("retry device out of range")
            return cls(message_id, sent_at, kind, sender, recipient, retry_id=failed, retry_device=device)
        access = b""
        if "access" in doc:
            if kind != KIND_TEXT:
                raise DecodeError("an access key travels only in a text message")
            try:
                access = base64.b64decode(_field(doc, "access", str), validate=True)
            except ValueError:
                raise DecodeError("access key is not base64") from None
            if len(access) != ACCESS_KEY_BYTES:
                raise DecodeError("access key has the wrong length")
        if kind != KIND_SYNC:
            return cls(
                message_id,
                sent_at,
                kind,
                sender,
                recipient,
                text,
                attachments=attachments,
                profile=profile,
                access=access,
            )
        sync = _field(doc, "sync", dict)
        dest = _field(sync, "dest", str)
        if len(dest) != 32 or not _is_hex(dest):
            raise DecodeError("sync destination must be 32 hex characters")
        try:
            dest_key = base64.b64decode(_field(sync, "dest_key", str), validate=True)
        except ValueError:
            raise DecodeError("sync destination key is not base64") from None
        if len(dest_key) != 33:
            raise DecodeError("sync destination key has the wrong length")
        return cls(message_id, sent_at, kind, sender, recipient, text, dest, dest_key, attachments, profile)


def _field(doc: dict[str, Any], name: str, kind: type[T]) -> T:
    value = doc.get(name)
    if not isinstance(value, kind):
        raise DecodeError(f"content field {name!r} missing or of the wrong type")
    return value


def _is_hex(s: str) -> bool:
    return all(c in "0123456789abcdef" for c in s)


def _b64(doc: dict[str, Any], name: str, length: int) -> bytes:
    try:
        raw = base64.b64decode(_field(doc, name, str), validate=True)
    except ValueError:
        raise DecodeError(f"content field {name!r} is not base64") from None
    if len(raw) != length:
        raise DecodeError(f"content field {name!r} has the wrong length")
    return raw
