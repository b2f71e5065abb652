"""Message content: what a sender writes, as the recipient decrypts it.

Content is UTF-8 JSON inside the padded, encrypted content layer — it is parsed only
after the AEAD check has passed. Decoding is strict: unknown kinds, missing fields or
wrong types raise DecodeError, and nothing else escapes (SECURITY-TESTS R9). Later issues
add kinds (sync, receipts, profile keys, attachments) without a new wire version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from imsg_cli.protocol.errors import DecodeError

KIND_TEXT = "text"
KINDS = frozenset({KIND_TEXT})
MAX_TEXT_LEN = 60_000
MAX_HANDLE_LEN = 254


@dataclass(frozen=True, slots=True)
class Content:
    message_id: str  # 32 hex: the same id the relay de-duplicates on
    sent_at: int  # ms since the epoch, the sender's clock
    kind: str
    sender_handle: str
    recipient_handle: str
    text: str = ""
    extra: dict = field(default_factory=dict)

    def encode(self) -> bytes:
        doc = {
            "v": 1,
            "id": self.message_id,
            "sent_at": self.sent_at,
            "kind": self.kind,
            "from": self.sender_handle,
            "to": self.recipient_handle,
            "text": self.text,
        }
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def decode(cls, data: bytes) -> "Content":
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
        return cls(message_id, sent_at, kind, sender, recipient, text)


def _field(doc: dict, name: str, kind: type):
    value = doc.get(name)
    if not isinstance(value, kind):
        raise DecodeError(f"content field {name!r} missing or of the wrong type")
    return value


def _is_hex(s: str) -> bool:
    return all(c in "0123456789abcdef" for c in s)
