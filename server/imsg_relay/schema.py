"""JSON schemas of the API, and the small validator that enforces them.

One table serves both purposes: handlers validate request bodies against the same schemas
that /openapi.json publishes, so the document cannot drift from what the relay accepts.
Supported keywords are the few used here (OpenAPI 3.0 subset). Violations are 400 with the
field's path, except `maxItems`, a limit, which is 413 (docs/RELAY-API.md).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from imsg_relay.auth import TOKEN_PATTERN
from imsg_relay.errors import RelayError, bad_request
from imsg_relay.settings import MAX_ACK_IDS, MAX_KEYS_PER_LIST, MAX_PROVISIONING_MESSAGE

MAX_DEVICE_ID = 2**31 - 1
HEX32 = r"^[0-9a-f]{32}$"
# Canonical handles: E.164 (`+` and up to 15 digits) or a lower-case e-mail address: no
# upper case, no second "@", no space or control character. Spelled out rather than with
# `\s`, which Python and ECMA-262 (JSON Schema's dialect) read differently (\x1c-\x1f).
HANDLE_PATTERN = r"^(\+[0-9]{1,15}|[^@\x00-\x20\x7f-\x9fA-Z]+@[^@\x00-\x20\x7f-\x9fA-Z]+)$"
MAX_KEY_B64 = 8192  # ML-KEM-768 public keys are 1184 bytes; room for type tags and growth
MAX_BLOB_B64 = 65536  # device lists and signatures: small signed structures

# Named schemas, published under components/schemas.
S: dict[str, dict[str, Any]] = {}


def _b64(max_length: int | None = None, description: str = "") -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "format": "byte"}
    if max_length is not None:
        schema["maxLength"] = max_length
    if description:
        schema["description"] = description
    return schema


ACCOUNT_ID = {"type": "string", "pattern": HEX32, "description": "32 lowercase hex characters"}
MESSAGE_ID = {"type": "string", "pattern": HEX32, "description": "32 lowercase hex characters"}
DEVICE_ID = {"type": "integer", "minimum": 1, "maximum": MAX_DEVICE_ID}
KEY_ID = {"type": "integer", "minimum": 0, "maximum": 2**32 - 1}
COUNT = {"type": "integer", "minimum": 0}
TOKEN = {"type": "string", "pattern": TOKEN_PATTERN, "description": "32 random bytes, base64url without padding"}
HANDLE = {"type": "string", "minLength": 1, "maxLength": 254, "pattern": HANDLE_PATTERN}
CHANNEL = {
    "type": "string",
    "pattern": r"^[0-9a-f]{16}$",
    "description": "provisioning channel id: 16 lowercase hex characters (8 random bytes)",
}
BLOB_ID = {
    "type": "string",
    "pattern": HEX32,
    "description": "32 lowercase hex characters (128 random bits the relay draws); "
    "holding it is the capability to download the blob",
}
PART_INDEX = {
    "type": "integer",
    "minimum": 0,
    "maximum": 2**31 - 1,
    "description": "0-based part number; below `parts` of the blob (else 400)",
}
TIME_MS = {"type": "integer", "minimum": 0}
HANDLE_ID = {
    "type": "string",
    "pattern": r"^[0-9a-f]{64}$",
    "description": "a handle's id: its blinded tag, 64 lowercase hex characters",
}
BOX = {
    "type": "string",
    "enum": ["new", "existing"],
    "description": "new: messages for the new device; existing: for the existing device",
}

S["Error"] = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string"},
        "message": {"type": "string"},
        "missing": {"type": "array", "items": {"type": "integer"}},
        "extra": {"type": "array", "items": {"type": "integer"}},
        "retry_after": {"type": "integer"},
        "limit": {"type": "integer"},
        "used": {"type": "integer"},
    },
}
S["Health"] = {
    "type": "object",
    "required": ["status", "version"],
    "properties": {"status": {"type": "string"}, "version": {"type": "string"}},
}
S["RegisterRequest"] = {
    "type": "object",
    "required": ["account_id", "account_key", "handle", "device_list", "device_id", "token"],
    "properties": {
        "account_id": ACCOUNT_ID,
        "account_key": _b64(44, "0x06 || Ed25519 public key (33 bytes, so 44 base64 characters starting with B)"),
        "handle": HANDLE,
        "label": _b64(1368, "the handle sealed by the account's devices for each other (opaque; see POST /v1/handles)"),
        "device_list": _b64(MAX_BLOB_B64, "opaque signed device list"),
        "device_id": DEVICE_ID,
        "token": TOKEN,
    },
}
S["DeviceCreated"] = {
    "type": "object",
    "required": ["account_id", "device_id"],
    "properties": {
        "account_id": ACCOUNT_ID,
        "device_id": DEVICE_ID,
        "handle_state": {"type": "string", "enum": ["pending", "unverified"]},
        "code_sent": {"type": "boolean"},
    },
}
S["AddDeviceRequest"] = {
    "type": "object",
    "required": ["token", "device_list"],
    "properties": {"token": TOKEN, "device_list": _b64(MAX_BLOB_B64)},
}
S["RemoveDeviceRequest"] = {
    "type": "object",
    "properties": {"device_list": _b64(MAX_BLOB_B64)},
}
S["DeviceRemoved"] = {
    "type": "object",
    "required": ["account_id", "device_id"],
    "properties": {"account_id": ACCOUNT_ID, "device_id": DEVICE_ID},
}
S["Account"] = {
    "type": "object",
    "required": ["account_id", "account_key", "device_list", "devices"],
    "properties": {
        "account_id": ACCOUNT_ID,
        "account_key": _b64(),
        "device_list": _b64(),
        "devices": {"type": "array", "items": DEVICE_ID},
    },
}
S["SignedPrekey"] = {
    "type": "object",
    "required": ["key_id", "public_key", "signature"],
    "properties": {"key_id": KEY_ID, "public_key": _b64(MAX_KEY_B64), "signature": _b64(MAX_KEY_B64)},
}
S["OneTimePrekey"] = {
    "type": "object",
    "required": ["key_id", "public_key"],
    "properties": {"key_id": KEY_ID, "public_key": _b64(MAX_KEY_B64)},
}
S["KeysRequest"] = {
    "type": "object",
    "properties": {
        "signed_prekey": {"$ref": "#/components/schemas/SignedPrekey"},
        "kem_last_resort": {"$ref": "#/components/schemas/SignedPrekey"},
        "one_time": {
            "type": "array",
            "maxItems": MAX_KEYS_PER_LIST,
            "items": {"$ref": "#/components/schemas/OneTimePrekey"},
        },
        "kem_one_time": {
            "type": "array",
            "maxItems": MAX_KEYS_PER_LIST,
            "items": {"$ref": "#/components/schemas/SignedPrekey"},
        },
    },
}
S["KeyCounts"] = {
    "type": "object",
    "required": ["one_time", "kem_one_time"],
    "properties": {"one_time": COUNT, "kem_one_time": COUNT},
}
S["KemPrekey"] = {
    "type": "object",
    "required": ["key_id", "public_key", "signature", "last_resort"],
    "properties": {"key_id": KEY_ID, "public_key": _b64(), "signature": _b64(), "last_resort": {"type": "boolean"}},
    "nullable": True,
}
S["Bundle"] = {
    "type": "object",
    "required": ["device_id", "signed_prekey", "one_time", "kem_prekey"],
    "properties": {
        "device_id": DEVICE_ID,
        "signed_prekey": {"$ref": "#/components/schemas/SignedPrekey"},
        "one_time": {
            "type": "object",
            "nullable": True,
            "required": ["key_id", "public_key"],
            "properties": {"key_id": KEY_ID, "public_key": _b64()},
        },
        "kem_prekey": {"$ref": "#/components/schemas/KemPrekey"},
    },
}
S["Bundles"] = {
    "type": "object",
    "required": ["account_id", "devices"],
    "properties": {
        "account_id": ACCOUNT_ID,
        "devices": {"type": "array", "items": {"$ref": "#/components/schemas/Bundle"}},
    },
}
S["OutgoingMessage"] = {
    "type": "object",
    "required": ["device_id", "body"],
    "properties": {"device_id": DEVICE_ID, "body": _b64(description="the envelope; at most 96 KiB decoded (413)")},
}
S["SendRequest"] = {
    "type": "object",
    "required": ["message_id", "messages"],
    "properties": {
        "message_id": MESSAGE_ID,
        "messages": {"type": "array", "items": {"$ref": "#/components/schemas/OutgoingMessage"}},
    },
}
S["SendResult"] = {
    "type": "object",
    "required": ["message_id", "stored"],
    "properties": {"message_id": MESSAGE_ID, "stored": COUNT},
}
S["IncomingMessage"] = {
    "type": "object",
    "required": ["message_id", "body", "received_at"],
    "properties": {"message_id": MESSAGE_ID, "body": _b64(), "received_at": {"type": "integer", "minimum": 0}},
}
S["Messages"] = {
    "type": "object",
    "required": ["messages", "more"],
    "properties": {
        "messages": {"type": "array", "items": {"$ref": "#/components/schemas/IncomingMessage"}},
        "more": {"type": "boolean"},
    },
}
S["AckRequest"] = {
    "type": "object",
    "required": ["message_ids"],
    "properties": {"message_ids": {"type": "array", "maxItems": MAX_ACK_IDS, "items": MESSAGE_ID}},
}
S["AckResult"] = {"type": "object", "required": ["acked"], "properties": {"acked": COUNT}}
S["ChannelRequest"] = {"type": "object", "properties": {}}
S["Channel"] = {
    "type": "object",
    "required": ["channel", "expires_at"],
    "properties": {"channel": CHANNEL, "expires_at": {"type": "integer", "minimum": 0}},
}
S["ChannelClosed"] = {"type": "object", "required": ["channel"], "properties": {"channel": CHANNEL}}
S["ProvisioningPut"] = {
    "type": "object",
    "required": ["body"],
    "properties": {
        "body": _b64(
            description=f"opaque, end-to-end encrypted; at most {MAX_PROVISIONING_MESSAGE // 1024} KiB decoded (413)"
        )
    },
}
S["ProvisioningQueued"] = {"type": "object", "required": ["queued"], "properties": {"queued": COUNT}}
S["ProvisioningMessage"] = {
    "type": "object",
    "required": ["body"],
    "properties": {
        "body": {
            **_b64(description="the oldest queued message, now deleted; null when the box stayed empty for the wait"),
            "nullable": True,
        }
    },
}

S["BlobRequest"] = {
    "type": "object",
    "required": ["size"],
    "properties": {
        "size": {
            "type": "integer",
            "minimum": 1,
            "description": "ciphertext bytes; over the relay's maximum blob size is 413 payload_too_large",
        }
    },
}
_BLOB_SHAPE = {
    "blob_id": BLOB_ID,
    "size": {"type": "integer", "minimum": 1},
    "part_size": {"type": "integer", "minimum": 1},
    "parts": {"type": "integer", "minimum": 1},
    "expires_at": {**TIME_MS, "description": "the relay deletes the blob then (complete or not)"},
}
S["BlobCreated"] = {"type": "object", "required": list(_BLOB_SHAPE), "properties": _BLOB_SHAPE}
_RECEIVED = {
    "type": "array",
    "items": {"type": "integer", "minimum": 0},
    "description": "indices of the parts received (durably), ascending",
}
S["BlobParts"] = {
    "type": "object",
    "required": ["received", "complete"],
    "properties": {
        "received": _RECEIVED,
        "complete": {"type": "boolean", "description": "every part is received: call complete next"},
    },
}
S["BlobStatus"] = {
    "type": "object",
    "required": [*_BLOB_SHAPE, "received", "complete"],
    "properties": {
        **_BLOB_SHAPE,
        "received": _RECEIVED,
        "complete": {
            "type": "boolean",
            "description": "the upload was completed (POST .../complete): read-only and downloadable",
        },
    },
}
S["BlobCompleted"] = {
    "type": "object",
    "required": ["blob_id", "size", "sha256"],
    "properties": {
        "blob_id": BLOB_ID,
        "size": {"type": "integer", "minimum": 1},
        "sha256": {
            "type": "string",
            "pattern": r"^[0-9a-f]{64}$",
            "description": "SHA-256 of the ciphertext, lowercase hex",
        },
    },
}
S["BlobDeleted"] = {"type": "object", "required": ["blob_id"], "properties": {"blob_id": BLOB_ID}}
# Raw bytes, not JSON: the request body of a part upload and the response of a download.
S["BlobBytes"] = {"type": "string", "format": "binary"}

_PATTERNS: dict[str, re.Pattern[str]] = {}


def _pattern(p: str) -> re.Pattern[str]:
    compiled = _PATTERNS.get(p)
    if compiled is None:
        # JSON Schema's "$" is the end of the string; Python's also matches before a final
        # newline, so anchor with \Z instead.
        python = p[:-1] + r"\Z" if p.endswith("$") else p
        compiled = _PATTERNS[p] = re.compile(python)
    return compiled


def validate(schema: dict[str, Any], value: Any, where: str = "body") -> Any:
    """Check `value` against `schema`; returns it with base64 fields decoded to bytes and
    integral floats turned into ints. Raises RelayError (400, or 413 for maxItems)."""
    ref = schema.get("$ref")
    if ref is not None:
        schema = S[ref.rsplit("/", 1)[1]]
    if value is None:
        if schema.get("nullable"):
            return None
        raise bad_request(f"{where} must not be null")
    kind = schema.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            raise bad_request(f"{where} must be an object")
        out = {}
        for name in schema.get("required", ()):
            if name not in value:
                raise bad_request(f"{where}.{name} is missing")
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                out[name] = validate(sub, value[name], f"{where}.{name}")
        return out
    if kind == "array":
        if not isinstance(value, list):
            raise bad_request(f"{where} must be an array")
        limit = schema.get("maxItems")
        if limit is not None and len(value) > limit:
            raise RelayError("payload_too_large", f"{where} has more than {limit} items", limit=limit)
        items = schema.get("items", {})
        return [validate(items, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad_request(f"{where} must be an integer")
        if isinstance(value, float):
            if not value.is_integer():
                raise bad_request(f"{where} must be an integer")
            value = int(value)
        if "minimum" in schema and value < schema["minimum"]:
            raise bad_request(f"{where} is below {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            raise bad_request(f"{where} is above {schema['maximum']}")
        return value
    if kind == "boolean":
        if not isinstance(value, bool):
            raise bad_request(f"{where} must be true or false")
        return value
    if kind == "string":
        if not isinstance(value, str):
            raise bad_request(f"{where} must be a string")
        if len(value) < schema.get("minLength", 0):
            raise bad_request(f"{where} is too short")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise bad_request(f"{where} is longer than {schema['maxLength']} characters")
        if "enum" in schema and value not in schema["enum"]:
            raise bad_request(f"{where} is not one of {', '.join(schema['enum'])}")
        if "pattern" in schema and not _pattern(schema["pattern"]).search(value):
            raise bad_request(f"{where} is not in the expected format")
        if schema.get("format") == "byte":
            return decode_b64(value, where)
        return value
    raise AssertionError(f"schema without a supported type at {where}")


def decode_b64(value: str, where: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{where} is not valid base64") from None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
