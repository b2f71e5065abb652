"""The API's types: request and response bodies as msgspec Structs, path and query values
as constrained scalar types. The same types validate requests (operation.Call decodes each
body straight into its Struct) and describe them in /openapi.json (openapi.py asks msgspec
for their JSON Schema), so the document cannot drift from what the relay accepts.

Conventions, so the contract of docs/RELAY-API.md holds:
- `bytes` fields are standard base64 with padding in JSON; their `max_length` bounds the
  decoded bytes (msgspec publishes the matching base64 `maxLength`).
- Patterns end in `\\Z`, not `$`: msgspec matches with Python's `re.search`, where `$` also
  matches before a final newline. openapi.py publishes them with `$` (ECMA-262's end).
- An optional field that must not be null is `X | UnsetType = UNSET`.
- A list over its limit is `413 payload_too_large`, not 400: the limit is checked in
  `__post_init__` (`max_items`), which raises the RelayError itself; the JSON Schema still
  publishes `maxItems`.

Route-specific types live with their routes (routes/reachable.py, discovery.py, sealed.py,
profiles.py, backups.py, privacy.py); these are the shared ones and the core routes'.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

from imsg_relay.auth import TOKEN_PATTERN
from imsg_relay.errors import RelayError
from imsg_relay.settings import MAX_ACK_IDS, MAX_FETCH_LIMIT, MAX_KEYS_PER_LIST, MAX_PROVISIONING_MESSAGE

__all__ = ["UNSET", "UnsetType"]

MAX_DEVICE_ID = 2**31 - 1
# Canonical handles: E.164 (`+` and up to 15 digits) or a lower-case e-mail address: no
# upper case, no second "@", no space or control character. Spelled out rather than with
# `\s`, which Python and ECMA-262 (JSON Schema's dialect) read differently (\x1c-\x1f).
HANDLE_PATTERN = r"^(\+[0-9]{1,15}|[^@\x00-\x20\x7f-\x9fA-Z]+@[^@\x00-\x20\x7f-\x9fA-Z]+)$"
MAX_KEY_BYTES = 6144  # ML-KEM-768 public keys are 1184 bytes; room for type tags and growth
MAX_BLOB_BYTES = 49152  # device lists and signatures: small signed structures


def pattern(p: str, description: str | None = None) -> Meta:
    """A string constraint from a JSON Schema pattern ending in `$` (matched as `\\Z`)."""
    assert p.endswith("$")
    return Meta(pattern=p[:-1] + r"\Z", description=description)


def max_items(where: str, items: list[Any] | UnsetType, limit: int) -> None:
    if not isinstance(items, UnsetType) and len(items) > limit:
        raise RelayError("payload_too_large", f"{where} has more than {limit} items", limit=limit)


def _list_meta(limit: int, **kw: Any) -> Meta:
    # Published as maxItems; enforced by max_items in __post_init__ (413, not 400).
    return Meta(extra_json_schema={"maxItems": limit}, **kw)


_HEX32 = "^[0-9a-f]{32}$"
_HEX64 = "^[0-9a-f]{64}$"

AccountId = Annotated[str, pattern(_HEX32, "32 lowercase hex characters")]
MessageId = Annotated[str, pattern(_HEX32, "32 lowercase hex characters")]
DeviceId = Annotated[int, Meta(ge=1, le=MAX_DEVICE_ID)]
KeyId = Annotated[int, Meta(ge=0, le=2**32 - 1)]
Count = Annotated[int, Meta(ge=0)]
TimeMs = Annotated[int, Meta(ge=0)]
Token = Annotated[str, pattern(TOKEN_PATTERN, "32 random bytes, base64url without padding")]
Handle = Annotated[str, Meta(min_length=1, max_length=254, pattern=HANDLE_PATTERN[:-1] + r"\Z")]
ChannelId = Annotated[
    str, pattern("^[0-9a-f]{16}$", "provisioning channel id: 16 lowercase hex characters (8 random bytes)")
]
BlobId = Annotated[
    str,
    pattern(
        _HEX32,
        "32 lowercase hex characters (128 random bits the relay draws); "
        "holding it is the capability to download the blob",
    ),
]
PartIndex = Annotated[
    int, Meta(ge=0, le=2**31 - 1, description="0-based part number; below `parts` of the blob (else 400)")
]
HandleId = Annotated[str, pattern(_HEX64, "a handle's id: its blinded tag, 64 lowercase hex characters")]
Box = Annotated[
    Literal["new", "existing"],
    Meta(description="new: messages for the new device; existing: for the existing device"),
]
BOXES = ("new", "existing")
Wait = Annotated[int, Meta(ge=0, le=60)]
FetchLimit = Annotated[int, Meta(ge=1, le=MAX_FETCH_LIMIT)]
# base64 in JSON; the bound is on the decoded bytes
AccountKey = Annotated[
    bytes, Meta(max_length=33, description="0x06 || Ed25519 public key (33 bytes, so 44 base64 characters)")
]
DeviceList = Annotated[bytes, Meta(max_length=MAX_BLOB_BYTES, description="opaque signed device list")]
PublicKey = Annotated[bytes, Meta(max_length=MAX_KEY_BYTES)]
Signature = Annotated[bytes, Meta(max_length=MAX_KEY_BYTES)]
Envelope = Annotated[bytes, Meta(description="the envelope; at most 96 KiB decoded (413)")]
HandleLabel = Annotated[
    bytes,
    Meta(
        max_length=1026,  # base64: 1368 characters
        description="the handle sealed by the account's devices for each other (opaque to the relay)",
    ),
]


# --- errors and health ---


class Error(Struct, omit_defaults=True):
    error: str
    message: str
    missing: list[int] | UnsetType = UNSET
    extra: list[int] | UnsetType = UNSET
    retry_after: int | UnsetType = UNSET
    limit: int | UnsetType = UNSET
    used: int | UnsetType = UNSET


class Health(Struct):
    status: str
    version: str


# --- accounts and devices ---


class RegisterRequest(Struct):
    account_id: AccountId
    account_key: AccountKey
    handle: Handle
    device_list: DeviceList
    device_id: DeviceId
    token: Token
    label: HandleLabel = b""


class DeviceCreated(Struct, omit_defaults=True):
    account_id: AccountId
    device_id: DeviceId
    handle_state: Literal["pending", "unverified"] | UnsetType = UNSET
    code_sent: bool | UnsetType = UNSET


class AddDeviceRequest(Struct):
    token: Token
    device_list: DeviceList


class RemoveDeviceRequest(Struct):
    device_list: DeviceList | UnsetType = UNSET


class DeviceRemoved(Struct):
    account_id: AccountId
    device_id: DeviceId


class Account(Struct):
    account_id: AccountId
    account_key: bytes
    device_list: bytes
    devices: list[DeviceId]


# --- prekeys ---


class SignedPrekey(Struct):
    key_id: KeyId
    public_key: PublicKey
    signature: Signature


class OneTimePrekey(Struct):
    key_id: KeyId
    public_key: PublicKey


class KeysRequest(Struct):
    signed_prekey: SignedPrekey | UnsetType = UNSET
    kem_last_resort: SignedPrekey | UnsetType = UNSET
    one_time: Annotated[list[OneTimePrekey], _list_meta(MAX_KEYS_PER_LIST)] = []
    kem_one_time: Annotated[list[SignedPrekey], _list_meta(MAX_KEYS_PER_LIST)] = []

    def __post_init__(self) -> None:
        max_items("body.one_time", self.one_time, MAX_KEYS_PER_LIST)
        max_items("body.kem_one_time", self.kem_one_time, MAX_KEYS_PER_LIST)


class KeyCounts(Struct):
    one_time: Count
    kem_one_time: Count


class KemPrekey(Struct):
    key_id: KeyId
    public_key: bytes
    signature: bytes
    last_resort: bool


class BundleOneTime(Struct):
    key_id: KeyId
    public_key: bytes


class Bundle(Struct):
    device_id: DeviceId
    signed_prekey: SignedPrekey
    one_time: BundleOneTime | None
    kem_prekey: KemPrekey | None


class Bundles(Struct):
    account_id: AccountId
    devices: list[Bundle]


# --- mailboxes ---


class OutgoingMessage(Struct):
    device_id: DeviceId
    body: Envelope


class SendRequest(Struct):
    message_id: MessageId
    messages: list[OutgoingMessage]


class SendResult(Struct):
    message_id: MessageId
    stored: Count


class IncomingMessage(Struct):
    message_id: MessageId
    body: bytes
    received_at: TimeMs


class Messages(Struct):
    messages: list[IncomingMessage]
    more: bool


class AckRequest(Struct):
    message_ids: Annotated[list[MessageId], _list_meta(MAX_ACK_IDS)]

    def __post_init__(self) -> None:
        max_items("body.message_ids", self.message_ids, MAX_ACK_IDS)


class AckResult(Struct):
    acked: Count


# --- provisioning channels ---


class ChannelRequest(Struct):
    pass


class Channel(Struct):
    channel: ChannelId
    expires_at: TimeMs


class ChannelClosed(Struct):
    channel: ChannelId


class ProvisioningPut(Struct):
    body: Annotated[
        bytes,
        Meta(description=f"opaque, end-to-end encrypted; at most {MAX_PROVISIONING_MESSAGE // 1024} KiB decoded (413)"),
    ]


class ProvisioningQueued(Struct):
    queued: Count


class ProvisioningMessage(Struct):
    body: Annotated[
        bytes | None,
        Meta(description="the oldest queued message, now deleted; null when the box stayed empty for the wait"),
    ]


# --- attachment blobs ---


class BlobRequest(Struct):
    size: Annotated[
        int, Meta(ge=1, description="ciphertext bytes; over the relay's maximum blob size is 413 payload_too_large")
    ]


PartsReceived = Annotated[
    list[Annotated[int, Meta(ge=0)]], Meta(description="indices of the parts received (durably), ascending")
]
Expiry = Annotated[int, Meta(ge=0, description="the relay deletes the blob then (complete or not)")]


class BlobCreated(Struct):
    blob_id: BlobId
    size: Annotated[int, Meta(ge=1)]
    part_size: Annotated[int, Meta(ge=1)]
    parts: Annotated[int, Meta(ge=1)]
    expires_at: Expiry


class BlobParts(Struct):
    received: PartsReceived
    complete: Annotated[bool, Meta(description="every part is received: call complete next")]


class BlobStatus(Struct):
    blob_id: BlobId
    size: Annotated[int, Meta(ge=1)]
    part_size: Annotated[int, Meta(ge=1)]
    parts: Annotated[int, Meta(ge=1)]
    expires_at: Expiry
    received: PartsReceived
    complete: Annotated[
        bool, Meta(description="the upload was completed (POST .../complete): read-only and downloadable")
    ]


class BlobCompleted(Struct):
    blob_id: BlobId
    size: Annotated[int, Meta(ge=1)]
    sha256: Annotated[str, pattern(_HEX64, "SHA-256 of the ciphertext, lowercase hex")]


class BlobDeleted(Struct):
    blob_id: BlobId
