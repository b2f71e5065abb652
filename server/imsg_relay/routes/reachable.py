"""Reachable handles (the caller's own, blinded): claim, verify with a code, list, update,
remove (private discovery, the lookups, is routes/discovery.py).
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
from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, Struct, UnsetType
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
MAX_LABEL = 1024  # the client-sealed label of a handle (for the account's own devices)

# A handle's label, sealed by the account's devices: at most MAX_LABEL bytes (413 past it,
# so it is checked in the route, not by the type).
Label = Annotated[bytes, Meta(description="the handle sealed by the account's devices for each other; opaque")]


class HandleRequest(Struct):
    handle: schema.Handle
    label: Label


class VerifyHandleRequest(Struct):
    handle: schema.Handle
    code: Annotated[str, schema.pattern("^[0-9]{6}$", "6 digits")]


class UpdateHandleRequest(Struct):
    receiving: bool | UnsetType = UNSET
    label: Label | UnsetType = UNSET


class Handle(Struct, omit_defaults=True):
    id: schema.HandleId
    state: Literal["pending", "verified", "unverified"]
    receiving: bool
    label: bytes
    added_at: schema.TimeMs
    code_expires_at: schema.TimeMs | UnsetType = UNSET


class Handles(Struct):
    handles: list[Handle]


class HandleRemoved(Struct):
    id: schema.HandleId


def _handle_json(row: HandleRow, now_ms: int) -> dict[str, Any]:
    out = {
        "id": row.tag.hex(),
        "state": row.state,
        "receiving": row.receiving,
        "label": (row.label),
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
    data = await call.body(HandleRequest)
    _label_limit(data.label)
    tag = tag_for(relay.discovery_key.output(data.handle))
    existing = await relay.storage.get_handle(device.account_id, tag)
    if existing is not None and existing.state in ("verified", "unverified"):
        return json_response(_handle_json(existing, relay.now_ms()))  # already held: no new code
    row, code = await new_handle_row(relay, device.account_id, data.handle, data.label)
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
        await send_code(relay, data.handle, code)
    return json_response(_handle_json(row, relay.now_ms()))


async def verify_handle(relay: RelayContext, call: Call) -> Response:
    device = await relay.authenticate(call.request)
    relay.limits.code_guess.check(device.account_id)
    data = await call.body(VerifyHandleRequest)
    output = relay.discovery_key.output(data.handle)
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
    if not hmac.compare_digest(row.code_hash, _code_hash(relay, device.account_id, tag, data.code)):
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
    data = await call.body(UpdateHandleRequest)
    receiving = None if isinstance(data.receiving, UnsetType) else data.receiving
    label = None if isinstance(data.label, UnsetType) else data.label
    _label_limit(label or b"")
    row = await relay.storage.update_handle(device.account_id, tag, receiving, label)
    if row is None:
        raise RelayError("not_found", "this account holds no such handle")
    return json_response(_handle_json(row, relay.now_ms()))


async def remove_handle(relay: RelayContext, call: Call) -> Response:
    device = await relay.authenticate(call.request)
    tag = _tag_param(call)
    if not await relay.storage.remove_handle(device.account_id, tag):
        raise RelayError("not_found", "this account holds no such handle")
    return json_response({"id": tag.hex()})
