"""Encrypted backups under a recovery code (sans-I/O: no disk, no network, no clock).

    code  = recovery_code(secret)                       # shown once, 9 groups of 4
    blob  = seal_backup(secret, document, rng)          # what the relay stores
    doc   = open_backup(parse_recovery_code(code), blob)

The recovery code carries 160 random bits and a 20-bit checksum, written in Crockford
base32 so it can be read aloud and typed back (0/O and 1/I/L are the same character).
Every key comes from the secret through HKDF-SHA256 with its own label; the relay only
ever sees SHA-256 of the access token, which is derived one way from the secret, so it
learns nothing that helps decrypt. A slow KDF (Argon2id) would add nothing here: the input
is 160 random bits, not a password.

A backup is never compressed: its plaintext is the JSON document, length-prefixed and then
zero-padded to a Padmé bucket (Nikitin et al., "Reducing Metadata Leakage from Encrypted
Files and Communication with PURBs", PETS 2019), so its size says only roughly how much
history there is, nothing about what the secrets in it are (SECURITY-TESTS 14).
See docs/PROTOCOL.md, "Backups".
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from typing import Any

from imsg.crypto import aead, sign
from imsg.crypto.errors import AuthenticationError
from imsg.crypto.kdf import hkdf
from imsg.crypto.labels import (
    LABEL_BACKUP_ACCESS,
    LABEL_BACKUP_AD,
    LABEL_BACKUP_KEY,
    LABEL_RECOVERY_CHECKSUM,
    LABEL_RESTORE_DEVICE,
)
from imsg.protocol.errors import DecodeError, DecryptionError, UntrustedIdentityError
from imsg.protocol.identity import account_id_for, verify_device_list
from imsg.protocol.provisioning import b64, field, unb64
from imsg.protocol.stores import Contact, StoredAttachment, StoredMessage

Rng = Callable[[int], bytes]

MAGIC = b"imsgbak\x01"  # 7 bytes of name, then the format version
SALT_LEN = 32
SECRET_LEN = 20  # 160 bits
CHECKSUM_BITS = 20
CODE_CHARS = 36  # (160 + 20) / 5
CODE_GROUP = 4
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U
_SAME_AS = {"O": "0", "I": "1", "L": "1"}  # Crockford's decoding of look-alikes
HEADER_LEN = len(MAGIC) + SALT_LEN
ZERO_NONCE = bytes(aead.NONCE_LEN)  # every backup has its own key (fresh salt), used once
MIN_PADDED = 64 * 1024  # the smallest bucket: an account with no history looks like any other
MAX_PLAINTEXT = 256 * 1024 * 1024  # larger histories are refused, not silently cut
DOCUMENT_FORMAT = "imsg-backup"
DOCUMENT_VERSION = 1


class RecoveryCodeError(ValueError):
    """not a recovery code"""


# --- the recovery code ---


def recovery_code(secret: bytes) -> str:
    """The code for `secret`: 36 characters in groups of 4, the last 4 a checksum."""
    if len(secret) != SECRET_LEN:
        raise ValueError("recovery secret must be 20 bytes")
    n = (int.from_bytes(secret, "big") << CHECKSUM_BITS) | _checksum(secret)
    chars = "".join(ALPHABET[(n >> (5 * i)) & 31] for i in reversed(range(CODE_CHARS)))
    return "-".join(chars[i : i + CODE_GROUP] for i in range(0, CODE_CHARS, CODE_GROUP))


def parse_recovery_code(code: str) -> bytes:
    """The secret of a recovery code as typed (any case, with or without dashes and
    spaces). Raises RecoveryCodeError saying what is wrong, before any network call."""
    chars = "".join(c for c in code.upper() if c not in "- \t\n")
    chars = "".join(_SAME_AS.get(c, c) for c in chars)
    bad = sorted({c for c in chars if c not in ALPHABET})
    if bad:
        shown = ", ".join(repr(c) for c in bad[:5])
        raise RecoveryCodeError(f"{shown} cannot appear in a recovery code")
    if len(chars) != CODE_CHARS:
        raise RecoveryCodeError(
            f"a recovery code has {CODE_CHARS} characters (9 groups of 4); this one has {len(chars)}"
        )
    n = 0
    for c in chars:
        n = (n << 5) | ALPHABET.index(c)
    secret = (n >> CHECKSUM_BITS).to_bytes(SECRET_LEN, "big")
    if n & ((1 << CHECKSUM_BITS) - 1) != _checksum(secret):
        raise RecoveryCodeError("the recovery code's checksum does not match: a character is mistyped")
    return secret


def _checksum(secret: bytes) -> int:
    digest = hashlib.sha256(LABEL_RECOVERY_CHECKSUM + secret).digest()
    return int.from_bytes(digest[:3], "big") >> (24 - CHECKSUM_BITS)


# --- keys ---


def access_token(secret: bytes) -> bytes:
    """32 bytes that let a holder of the code fetch the backup and enrol a device; the
    relay stores only SHA-256 of them."""
    return hkdf(secret, salt=None, info=LABEL_BACKUP_ACCESS, length=32)


def access_hash(secret: bytes) -> bytes:
    return hashlib.sha256(access_token(secret)).digest()


def _backup_key(secret: bytes, salt: bytes) -> bytes:
    return hkdf(secret, salt=salt, info=LABEL_BACKUP_KEY, length=aead.KEY_LEN)


# --- padding ---


def padded_length(n: int) -> int:
    """Padmé: round `n` up so that only its top ~log2(log2(n)) bits vary (overhead at most
    12 %), and never below MIN_PADDED."""
    if n <= MIN_PADDED:
        return MIN_PADDED
    e = n.bit_length() - 1  # floor(log2 n)
    s = e.bit_length()  # floor(log2 e) + 1
    mask = (1 << (e - s)) - 1
    return (n + mask) & ~mask


# --- sealing ---


def seal_backup(secret: bytes, document: bytes, rng: Rng) -> bytes:
    """MAGIC || salt || AES-256-GCM(HKDF(secret, salt, LABEL_BACKUP_KEY), 0^12,
    u64(len(doc)) || doc || zero padding, ad = LABEL_BACKUP_AD || MAGIC || salt)."""
    if len(document) > MAX_PLAINTEXT:
        raise ValueError(f"backup is over {MAX_PLAINTEXT} bytes")
    salt = rng(SALT_LEN)
    body = struct.pack(">Q", len(document)) + document
    plaintext = body + bytes(padded_length(len(body)) - len(body))
    header = MAGIC + salt
    return header + aead.seal(_backup_key(secret, salt), ZERO_NONCE, plaintext, LABEL_BACKUP_AD + header)


def open_backup(secret: bytes, blob: bytes) -> bytes:
    """The document inside a backup. Raises DecodeError (not a backup, unknown version) or
    DecryptionError (wrong recovery code, or the bytes were changed)."""
    if len(blob) < HEADER_LEN + aead.TAG_LEN + 8 or blob[: len(MAGIC) - 1] != MAGIC[:-1]:
        raise DecodeError("not an imsg backup")
    if blob[len(MAGIC) - 1] != MAGIC[-1]:
        raise DecodeError(f"backup format version {blob[len(MAGIC) - 1]} is not supported")
    header = blob[:HEADER_LEN]
    try:
        plaintext = aead.open_(
            _backup_key(secret, header[len(MAGIC) :]), ZERO_NONCE, blob[HEADER_LEN:], LABEL_BACKUP_AD + header
        )
    except AuthenticationError:
        raise DecryptionError(
            "the backup does not decrypt with this recovery code: the code is "
            "not this backup's, or the backup was corrupted or tampered with"
        ) from None
    (length,) = struct.unpack(">Q", plaintext[:8])
    # Authenticated already: these checks catch our own bugs, not an attacker.
    if length > len(plaintext) - 8 or any(plaintext[8 + length :]):
        raise DecodeError("backup padding is malformed")
    return plaintext[8 : 8 + length]


# --- the relay's proof that the account key holder enrols a device ---


def restore_statement(account_id: str, device_id: int, token: bytes, device_list: bytes, signed_at: int) -> bytes:
    """What the account key signs (after LABEL_RESTORE_DEVICE) to enrol a restored device:
    account id, device id, SHA-256 of the device's relay token, SHA-256 of the new signed
    device list, and the time (the relay accepts it for five minutes)."""
    return (
        account_id.encode("ascii")
        + struct.pack(">I", device_id)
        + hashlib.sha256(token).digest()
        + hashlib.sha256(device_list).digest()
        + struct.pack(">Q", signed_at)
    )


def sign_restore(account_private: bytes, statement: bytes) -> bytes:
    return sign.SigningKey(account_private).sign(LABEL_RESTORE_DEVICE, statement)


# --- the document ---


@dataclass(frozen=True, slots=True)
class BackupContents:
    """What a new device needs: never ratchet sessions, prekeys or device keys."""

    created_at: int
    account_id: str
    handle: str
    name: str
    account_private: bytes
    account_public: bytes
    profile_key: bytes
    device_list: bytes  # the account's signed list when the backup was made
    contacts: tuple[Contact, ...]
    messages: tuple[StoredMessage, ...]
    attachments: tuple[StoredAttachment, ...]
    settings: dict[str, str]


def encode_document(c: BackupContents) -> bytes:
    doc = {
        "format": DOCUMENT_FORMAT,
        "v": DOCUMENT_VERSION,
        "created_at": c.created_at,
        "account": {
            "account_id": c.account_id,
            "handle": c.handle,
            "name": c.name,
            "account_private": b64(c.account_private),
            "profile_key": b64(c.profile_key),
            "device_list": b64(c.device_list),
        },
        # Every field of a contact, so one added to `Contact` later is backed up too.
        "contacts": [{f.name: _json_value(getattr(k, f.name)) for f in fields(Contact)} for k in c.contacts],
        "messages": [
            {
                "id": m.message_id,
                "peer": m.peer_account_id,
                "peer_handle": m.peer_handle,
                "dir": m.direction,
                "from": m.sender_handle,
                "to": m.recipient_handle,
                "text": m.text,
                "sent_at": m.sent_at,
                "stored_at": m.stored_at,
                "sender_device": m.sender_device,
            }
            for m in c.messages
        ],
        "attachments": [
            {
                "message_id": a.message_id,
                "index": a.index,
                "blob_id": a.blob_id,
                "key": b64(a.key),
                "digest": b64(a.digest),
                "size": a.size,
                "name": a.name,
                "content_type": a.content_type,
            }
            for a in c.attachments
        ],
        "settings": dict(c.settings),
    }
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def decode_document(raw: bytes) -> BackupContents:
    """Parse and check a decrypted document. Contacts must hold keys their account ids
    derive from and device lists those keys signed; the account key must match its id."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise DecodeError("backup document is not json") from None
    if not isinstance(doc, dict) or doc.get("format") != DOCUMENT_FORMAT:
        raise DecodeError("not an imsg backup document")
    if doc.get("v") != DOCUMENT_VERSION:
        raise DecodeError(f"backup document version {doc.get('v')!r} is not supported")
    try:
        acct = field(doc, "account", dict)
        private = unb64(acct, "account_private", 32)
        public = sign.SigningKey(private).public
        account_id = field(acct, "account_id", str)
        if account_id_for(public) != account_id:
            raise DecodeError("the backup's account key does not match its account id")
        device_list = unb64(acct, "device_list")
        verify_device_list(device_list, public)
        profile = acct.get("profile_key") or ""
        contacts = tuple(_contact(k) for k in field(doc, "contacts", list))
        messages = tuple(_message(m) for m in field(doc, "messages", list))
        attachments = tuple(_attachment(a) for a in field(doc, "attachments", list))
        settings = field(doc, "settings", dict)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in settings.items()):
            raise DecodeError("backup settings must be text")
        return BackupContents(
            int(field(doc, "created_at", int)),
            account_id,
            field(acct, "handle", str),
            str(acct.get("name", ""))[:200],
            private,
            public,
            unb64(acct, "profile_key", 32) if profile else b"",
            device_list,
            contacts,
            messages,
            attachments,
            settings,
        )
    except DecodeError:
        raise
    except UntrustedIdentityError as exc:
        raise DecodeError(f"backup holds a device list its key did not sign: {exc}") from None
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise DecodeError(f"malformed backup document: {exc}") from None


def _json_value(v: Any) -> Any:
    return b64(v) if isinstance(v, bytes) else v


_KEY_FIELDS = ("profile_key", "shared_profile_key")  # 32 bytes, or empty when not (yet) known


def _contact(doc: Any) -> Contact:
    """A contact: the fields this version knows, each of its declared type (bytes as base64);
    a field missing takes its default, an unknown one is ignored (a newer writer's)."""
    if not isinstance(doc, dict):
        raise DecodeError("malformed contact")
    values: dict[str, Any] = {}
    for f in fields(Contact):
        if f.name not in doc:
            if f.default is MISSING:
                raise DecodeError(f"contact field {f.name!r} missing")
            continue
        default = f.default if f.default is not MISSING else None
        kind = type(default) if default is not None else (bytes if f.name in ("account_key", "device_list") else str)
        if kind is bytes:
            values[f.name] = unb64(doc, f.name) if doc[f.name] else b""
        else:
            values[f.name] = field(doc, f.name, kind)
    contact = Contact(**values)
    if len(contact.account_key) != 32 or account_id_for(contact.account_key) != contact.account_id:
        raise DecodeError("a contact's key does not match its account id")
    verify_device_list(contact.device_list, contact.account_key)
    if contact.status not in ("ok", "changed", "replaced"):
        raise DecodeError("malformed contact status")
    if any(len(getattr(contact, name, b"")) not in (0, 32) for name in _KEY_FIELDS):
        raise DecodeError("a contact's profile key is not 32 bytes")
    return contact


def _message(doc: Any) -> StoredMessage:
    if not isinstance(doc, dict):
        raise DecodeError("malformed message")
    message_id = str(doc["id"])
    if len(message_id) != 32 or doc["dir"] not in ("in", "out"):
        raise DecodeError("malformed message")
    return StoredMessage(
        message_id,
        str(doc["peer"]),
        str(doc["peer_handle"]),
        doc["dir"],
        str(doc["from"]),
        str(doc["to"]),
        str(doc["text"]),
        int(doc["sent_at"]),
        int(doc["stored_at"]),
        int(doc["sender_device"]),
    )


def _attachment(doc: Any) -> StoredAttachment:
    if not isinstance(doc, dict):
        raise DecodeError("malformed attachment record")
    return StoredAttachment(
        str(doc["message_id"]),
        int(doc["index"]),
        str(doc["blob_id"]),
        unb64(doc, "key", 32),
        unb64(doc, "digest", 32),
        int(doc["size"]),
        str(doc["name"]),
        str(doc["content_type"]),
    )
