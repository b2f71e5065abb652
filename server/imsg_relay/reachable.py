"""Reachable handles and private discovery: the routes (a mixin of `Relay`) and their
schemas. See docs/RELAY-API.md "Reachable handles" and docs/PROTOCOL.md §8a.

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
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from imsg_relay import schema
from imsg_relay.discovery import (
    DiscoveryKey,
    bucket_range,
    prefix_bits,
    seal_record,
    tag_for,
)
from imsg_relay.errors import RelayError, bad_request
from imsg_relay.jsonio import dumps
from imsg_relay.ratelimit import RateLimiter
from imsg_relay.storage.base import HandleRow, StorageConflict
from imsg_relay.verifiers import Verifier, VerifierError

log = logging.getLogger("imsg_relay")

CODE_DIGITS = 6
CODE_TTL_MS = 10 * 60 * 1000  # a code expires 10 minutes after it is sent
CODE_MAX_TRIES = 5  # wrong guesses before a code is void
LABEL_CODE = b"imsg/v1/verification-code"
MAX_EVALUATIONS = 1000  # blinded elements per request
MAX_PREFIXES = 1000  # buckets per request
MAX_LABEL = 1024  # the client-sealed label of a handle (for the account's own devices)
COUNT_CACHE_SECONDS = 30.0  # the bucket size policy follows the registry this closely

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


def _json(body: Any, status: int = 200) -> Response:
    return Response(dumps(body), status_code=status, media_type="application/json")


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


class ReachableRoutes:
    """Handlers for /v1/handles and /v1/discovery. Expects the `Relay` attributes settings,
    storage, secret, now_ms(), authenticate() and body()."""

    discovery_key: DiscoveryKey
    verifier: Verifier

    def init_reachable(self, verifier: Verifier) -> None:
        s = self.settings
        self.verifier = verifier
        self.discovery_limit = RateLimiter(s.discovery_rate, s.discovery_burst)
        self.code_handle_limit = RateLimiter(s.code_handle_rate, s.code_handle_burst)
        self.code_account_limit = RateLimiter(s.code_account_rate, s.code_account_burst)
        self.code_guess_limit = RateLimiter(s.code_guess_rate, s.code_guess_burst)
        self._count_cache = (0.0, 0)

    def load_discovery_key(self) -> None:
        self.discovery_key = DiscoveryKey.load(self.settings.discovery_key_path)

    # --- a handle's blinded row ---

    def _code_hash(self, account_id: str, tag: bytes, code: str) -> bytes:
        return hmac.new(
            self.secret, LABEL_CODE + bytes.fromhex(account_id) + tag + code.encode(), hashlib.sha256
        ).digest()

    async def new_handle_row(self, account_id: str, handle: str, label: bytes) -> tuple[HandleRow, str | None]:
        """The row for a newly claimed handle and the code to send (None: no verifier).
        Rate limits are checked before anything is computed or stored."""
        output = self.discovery_key.output(handle)
        tag = tag_for(output)
        now = self.now_ms()
        if not self.verifier.verifies:
            return HandleRow(
                tag, account_id, "unverified", True, label, now, seal_record(output, account_id, verified=False)
            ), None
        self.code_handle_limit.check(tag)
        self.code_account_limit.check(account_id)
        code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
        return HandleRow(
            tag,
            account_id,
            "pending",
            True,
            label,
            now,
            b"",
            self._code_hash(account_id, tag, code),
            now + CODE_TTL_MS,
            0,
        ), code

    async def send_code(self, handle: str, code: str) -> None:
        try:
            await self.verifier.send(handle, code)
        except VerifierError as exc:
            log.warning("a verification code was not delivered: %s", exc)
            raise RelayError("verifier_failed", f"the verification code could not be sent: {exc}") from None

    # --- routes ---

    async def add_handle(self, request: Request) -> Response:
        device = await self.authenticate(request)
        data = await self.body(request, "HandleRequest")
        if len(data["label"]) > MAX_LABEL:
            raise RelayError("payload_too_large", f"label is over {MAX_LABEL} bytes", limit=MAX_LABEL)
        tag = tag_for(self.discovery_key.output(data["handle"]))
        existing = await self.storage.get_handle(device.account_id, tag)
        if existing is not None and existing.state in ("verified", "unverified"):
            return _json(_handle_json(existing, self.now_ms()))  # already held: no new code
        row, code = await self.new_handle_row(device.account_id, data["handle"], data["label"])
        try:
            await self.storage.put_handle(row, self.settings.max_handles)
        except StorageConflict as exc:
            if exc.code == "too_many_handles":
                raise RelayError(
                    "too_many_handles",
                    f"this account already has {self.settings.max_handles} handles; remove one first",
                    limit=self.settings.max_handles,
                ) from None
            raise RelayError("handle_taken", "another account holds this handle") from None
        if code is not None:
            await self.send_code(data["handle"], code)
        return _json(_handle_json(row, self.now_ms()))

    async def verify_handle(self, request: Request) -> Response:
        device = await self.authenticate(request)
        self.code_guess_limit.check(device.account_id)
        data = await self.body(request, "VerifyHandleRequest")
        output = self.discovery_key.output(data["handle"])
        tag = tag_for(output)
        row = await self.storage.get_handle(device.account_id, tag)
        if row is None:
            raise RelayError("not_found", "this account has not added that handle")
        if row.state != "pending":
            return _json(_handle_json(row, self.now_ms()))
        if row.code_hash is None or row.code_expires_at <= self.now_ms():
            raise RelayError(
                "no_code", "no live code for this handle (expired, used, or too many wrong tries): ask for a new one"
            )
        if not hmac.compare_digest(row.code_hash, self._code_hash(device.account_id, tag, data["code"])):
            left = await self.storage.wrong_code(device.account_id, tag, CODE_MAX_TRIES)
            raise RelayError(
                "wrong_code",
                "wrong verification code" + ("" if left else "; it is now void, ask for a new one"),
                tries_left=left,
            )
        await self.storage.verify_handle(device.account_id, tag, seal_record(output, device.account_id, True))
        row = await self.storage.get_handle(device.account_id, tag)
        return _json(_handle_json(row, self.now_ms()))

    async def list_handles(self, request: Request) -> Response:
        device = await self.authenticate(request)
        now = self.now_ms()
        rows = await self.storage.account_handles(device.account_id)
        return _json({"handles": [_handle_json(r, now) for r in rows]})

    def _tag_param(self, request: Request) -> bytes:
        return bytes.fromhex(self.path_param(request, "handle_id", _TAG_HEX))

    async def update_handle(self, request: Request) -> Response:
        device = await self.authenticate(request)
        tag = self._tag_param(request)
        data = await self.body(request, "UpdateHandleRequest")
        if len(data.get("label", b"")) > MAX_LABEL:
            raise RelayError("payload_too_large", f"label is over {MAX_LABEL} bytes", limit=MAX_LABEL)
        row = await self.storage.update_handle(device.account_id, tag, data.get("receiving"), data.get("label"))
        if row is None:
            raise RelayError("not_found", "this account holds no such handle")
        return _json(_handle_json(row, self.now_ms()))

    async def remove_handle(self, request: Request) -> Response:
        device = await self.authenticate(request)
        tag = self._tag_param(request)
        if not await self.storage.remove_handle(device.account_id, tag):
            raise RelayError("not_found", "this account holds no such handle")
        return _json({"id": tag.hex()})

    async def _prefix_bits(self) -> int:
        at, count = self._count_cache
        now = time.monotonic()
        if now - at > COUNT_CACHE_SECONDS or at == 0.0:
            count = await self.storage.discoverable_count()
            self._count_cache = (now, count)
        return prefix_bits(count)

    async def evaluate(self, request: Request) -> Response:
        device = await self.authenticate(request)
        data = await self.body(request, "EvaluateRequest")
        elements = data["elements"]
        if not elements:
            raise bad_request("elements is empty")
        # One event per element, per account: the budget bounds how many handles any
        # account can test. Refused whole, before any evaluation, when over it.
        for _ in elements:
            wait = self.discovery_limit.retry_after(device.account_id)
            if wait > 0:
                seconds = max(1, int(wait) + 1)
                raise RelayError(
                    "rate_limited",
                    "too many lookups for this account, slow down",
                    headers={"Retry-After": str(seconds)},
                    retry_after=seconds,
                )
        import imsg_oprf

        out = []
        for i, element in enumerate(elements):
            try:
                out.append(schema.b64(self.discovery_key.evaluate_blinded(element)))
            except imsg_oprf.OprfError:
                raise bad_request(f"elements[{i}] is not a valid ristretto255 element") from None
        return _json({"evaluated": out, "prefix_bits": await self._prefix_bits()})

    async def buckets(self, request: Request) -> Response:
        await self.authenticate(request)
        data = await self.body(request, "BucketsRequest")
        if not data["prefixes"]:
            raise bad_request("prefixes is empty")
        bits = await self._prefix_bits()
        if data["prefix_bits"] != bits:
            raise RelayError("prefix_bits_changed", f"buckets are now {bits}-bit prefixes", prefix_bits=bits)
        out = []
        for prefix in dict.fromkeys(data["prefixes"]):
            if prefix >> bits:
                raise bad_request(f"prefix {prefix} does not fit in {bits} bits")
            entries = await self.storage.discovery_bucket(*bucket_range(prefix, bits))
            out.append(
                {"prefix": prefix, "entries": [{"tag": schema.b64(t), "record": schema.b64(r)} for t, r in entries]}
            )
        return _json({"prefix_bits": bits, "buckets": out})
