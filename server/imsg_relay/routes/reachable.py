"""Reachable handles (the caller's own, blinded): claim, verify with a code, list, update,
remove; and the schemas of these routes and of private discovery (routes/discovery.py).
See docs/RELAY-API.md "Reachable handles" and docs/PROTOCOL.md §8a.

What the relay learns, and keeps:
- adding or verifying a handle: the handle in the clear for that one request (it must send
  the code, or with no verifier accept the claim); it keeps only the tag, a sealed record
  and the client's sealed label; a pending code only as HMAC(relay secret, ...);
- an OPRF evaluation: a blinded element, uniformly random to it; nothing is stored;
- a bucket read: a prefix of a tag, shared by ~MIN_BUCKET registered handles; nothing is
  stored. No table, log line or counter here is keyed by who asked and what for: the rate
  limiters count events per account in memory and never see a handle.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from typing import Any

from starlette.responses import Response

from imsg_relay import schema
from imsg_relay.context import RelayContext
from imsg_relay.discovery import seal_record, tag_for
from imsg_relay.errors import RelayError
from imsg_relay.operation import Call, json_response
from imsg_relay.storage.base import HandleRow, StorageConflict
from imsg_relay.verifiers import VerifierError

log = logging.getLogger("imsg_relay")

CODE_DIGITS = 6
CODE_TTL_MS = 10 * 60 * 1000  # a code expires 10 minutes after it is sent
CODE_MAX_TRIES = 5  # wrong guesses before a code is void
LABEL_CODE = b"imsg/v1/verification-code"
MAX_EVALUATIONS = 1000  # blinded elements per request
MAX_PREFIXES = 1000  # buckets per request
MAX_LABEL = 1024  # the client-sealed label of a handle (for the account's own devices)

_ELEMENT = schema._b64(44, "a ristretto255 element (32 bytes)")
_TAG_HEX = {
    "type": "string",
    "pattern": r"^[0-9a-f]{64}$",
    "description": "a handle's id: its blinded tag, 64 lowercase hex characters",
}
_LABEL = schema._b64(
    -(-MAX_LABEL // 3) * 4, "the handle sealed by the account's devices for each other; opaque to the relay"
)
_CODE = {"type": "string", "pattern": r"^[0-9]{6}$", "description": "6 digits"}
_STATE = {"type": "string", "enum": ["pending", "verified", "unverified"]}

schema.S["HandleRequest"] = {
    "type": "object",
    "required": ["handle", "label"],
    "properties": {"handle": schema.HANDLE, "label": _LABEL},
}
schema.S["VerifyHandleRequest"] = {
    "type": "object",
    "required": ["handle", "code"],
    "properties": {"handle": schema.HANDLE, "code": _CODE},
}
schema.S["UpdateHandleRequest"] = {
    "type": "object",
    "properties": {"receiving": {"type": "boolean"}, "label": _LABEL},
}
schema.S["Handle"] = {
    "type": "object",
    "required": ["id", "state", "receiving", "label", "added_at"],
    "properties": {
        "id": _TAG_HEX,
        "state": _STATE,
        "receiving": {"type": "boolean"},
        "label": _LABEL,
        "added_at": schema.TIME_MS,
        "code_expires_at": schema.TIME_MS,
    },
}
schema.S["Handles"] = {
    "type": "object",
    "required": ["handles"],
    "properties": {"handles": {"type": "array", "items": {"$ref": "#/components/schemas/Handle"}}},
}
schema.S["HandleRemoved"] = {"type": "object", "required": ["id"], "properties": {"id": _TAG_HEX}}
schema.S["EvaluateRequest"] = {
    "type": "object",
    "required": ["elements"],
    "properties": {"elements": {"type": "array", "minItems": 1, "maxItems": MAX_EVALUATIONS, "items": _ELEMENT}},
}
schema.S["Evaluated"] = {
    "type": "object",
    "required": ["evaluated", "prefix_bits"],
    "properties": {
        "evaluated": {"type": "array", "items": _ELEMENT},
        "prefix_bits": {"type": "integer", "minimum": 0, "maximum": 16},
    },
}
schema.S["BucketsRequest"] = {
    "type": "object",
    "required": ["prefix_bits", "prefixes"],
    "properties": {
        "prefix_bits": {"type": "integer", "minimum": 0, "maximum": 16},
        "prefixes": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_PREFIXES,
            "items": {"type": "integer", "minimum": 0, "maximum": 65535},
        },
    },
}
schema.S["Buckets"] = {
    "type": "object",
    "required": ["prefix_bits", "buckets"],
    "properties": {
        "prefix_bits": {"type": "integer", "minimum": 0, "maximum": 16},
        "buckets": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["prefix", "entries"],
                "properties": {
                    "prefix": {"type": "integer", "minimum": 0},
                    "entries": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["tag", "record"],
                            "properties": {"tag": schema._b64(44), "record": schema._b64(80)},
                        },
                    },
                },
            },
        },
    },
}


def _handle_json(row: HandleRow, now_ms: int) -> dict[str, Any]:
    out = {
        "id": row.tag.hex(),
        "state": row.state,
        "receiving": row.receiving,
        "label": schema.b64(row.label),
        "added_at": row.created_at,
    }
    if row.state == "pending" and row.code_hash is not None and row.code_expires_at > now_ms:
        out["code_expires_at"] = row.code_expires_at
    return out


# --- a handle's blinded row ---


def _code_hash(relay: RelayContext, account_id: str, tag: bytes, code: str) -> bytes:
    return hmac.new(relay.secret, LABEL_CODE + bytes.fromhex(account_id) + tag + code.encode(), hashlib.sha256).digest()


async def new_handle_row(
    relay: RelayContext, account_id: str, handle: str, label: bytes
) -> tuple[HandleRow, str | None]:
    """The row for a newly claimed handle and the code to send (None: no verifier).
    Rate limits are checked before anything is computed or stored."""
    output = relay.discovery_key.output(handle)
    tag = tag_for(output)
    now = relay.now_ms()
    if not relay.verifier.verifies:
        record = seal_record(output, account_id, verified=False)
        return HandleRow(tag, account_id, "unverified", True, label, now, record), None
    relay.limits.code_handle.check(tag)
    relay.limits.code_account.check(account_id)
    code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
    code_hash = _code_hash(relay, account_id, tag, code)
    return HandleRow(tag, account_id, "pending", True, label, now, b"", code_hash, now + CODE_TTL_MS, 0), code


async def send_code(relay: RelayContext, handle: str, code: str) -> None:
    try:
        await relay.verifier.send(handle, code)
    except VerifierError as exc:
        log.warning("a verification code was not delivered: %s", exc)
        raise RelayError("verifier_failed", f"the verification code could not be sent: {exc}") from None


def _label_limit(label: bytes) -> None:
    if len(label) > MAX_LABEL:
        raise RelayError("payload_too_large", f"label is over {MAX_LABEL} bytes", limit=MAX_LABEL)


# --- routes ---


async def add_handle(relay: RelayContext, call: Call) -> Response:
    device = await relay.authenticate(call.request)
    data = await call.body()
    _label_limit(data["label"])
    tag = tag_for(relay.discovery_key.output(data["handle"]))
    existing = await relay.storage.get_handle(device.account_id, tag)
    if existing is not None and existing.state in ("verified", "unverified"):
        return json_response(_handle_json(existing, relay.now_ms()))  # already held: no new code
    row, code = await new_handle_row(relay, device.account_id, data["handle"], data["label"])
    cap = relay.settings.max_handles
    try:
        await relay.storage.put_handle(row, cap)
    except StorageConflict as exc:
        if exc.code == "too_many_handles":
            raise RelayError(
                "too_many_handles", f"this account already has {cap} handles; remove one first", limit=cap
            ) from None
        raise RelayError("handle_taken", "another account holds this handle") from None
    if code is not None:
        await send_code(relay, data["handle"], code)
    return json_response(_handle_json(row, relay.now_ms()))


async def verify_handle(relay: RelayContext, call: Call) -> Response:
    device = await relay.authenticate(call.request)
    relay.limits.code_guess.check(device.account_id)
    data = await call.body()
    output = relay.discovery_key.output(data["handle"])
    tag = tag_for(output)
    row = await relay.storage.get_handle(device.account_id, tag)
    if row is None:
        raise RelayError("not_found", "this account has not added that handle")
    if row.state != "pending":
        return json_response(_handle_json(row, relay.now_ms()))
    if row.code_hash is None or row.code_expires_at <= relay.now_ms():
        raise RelayError(
            "no_code", "no live code for this handle (expired, used, or too many wrong tries): ask for a new one"
        )
    if not hmac.compare_digest(row.code_hash, _code_hash(relay, device.account_id, tag, data["code"])):
        left = await relay.storage.wrong_code(device.account_id, tag, CODE_MAX_TRIES)
        raise RelayError(
            "wrong_code",
            "wrong verification code" + ("" if left else "; it is now void, ask for a new one"),
            tries_left=left,
        )
    await relay.storage.verify_handle(device.account_id, tag, seal_record(output, device.account_id, True))
    verified = await relay.storage.get_handle(device.account_id, tag)
    if verified is None:  # removed by another device in between
        raise RelayError("not_found", "this account has not added that handle")
    return json_response(_handle_json(verified, relay.now_ms()))


async def list_handles(relay: RelayContext, call: Call) -> Response:
    device = await relay.authenticate(call.request)
    now = relay.now_ms()
    rows = await relay.storage.account_handles(device.account_id)
    return json_response({"handles": [_handle_json(r, now) for r in rows]})


def _tag_param(call: Call) -> bytes:
    return bytes.fromhex(call.path("handle_id"))


async def update_handle(relay: RelayContext, call: Call) -> Response:
    device = await relay.authenticate(call.request)
    tag = _tag_param(call)
    data = await call.body()
    _label_limit(data.get("label", b""))
    row = await relay.storage.update_handle(device.account_id, tag, data.get("receiving"), data.get("label"))
    if row is None:
        raise RelayError("not_found", "this account holds no such handle")
    return json_response(_handle_json(row, relay.now_ms()))


async def remove_handle(relay: RelayContext, call: Call) -> Response:
    device = await relay.authenticate(call.request)
    tag = _tag_param(call)
    if not await relay.storage.remove_handle(device.account_id, tag):
        raise RelayError("not_found", "this account holds no such handle")
    return json_response({"id": tag.hex()})
