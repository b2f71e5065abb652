"""The relay's ASGI application: `create_app(settings, storage)`.

Plain Starlette routes with JSON validated against the schemas in `schema.py`; the same
table of operations builds the routes and /openapi.json. No module-level state: everything
a request needs hangs off the `Relay` object the factory builds, so tests can run as many
relays side by side as they like.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from imsg_relay import backups, privacy, schema
from imsg_relay.auth import bearer_token_hash, decode_token, token_hash
from imsg_relay.blinding import load_or_create_secret
from imsg_relay.blobs.base import BlobMissing, BlobReader, BlobStore
from imsg_relay.errors import (
    CatchAllMiddleware,
    RelayError,
    StorageUnavailable,
    bad_request,
    http_exception_handler,
    relay_error_handler,
    storage_unavailable_handler,
)
from imsg_relay.jsonio import dumps, loads
from imsg_relay.limits import BodyLimitMiddleware
from imsg_relay.profiles import PROFILE_PARAMS, PROFILE_READ_PARAMS, ProfileRoutes
from imsg_relay.push import InProcessPush, Push
from imsg_relay.ratelimit import RateLimiter
from imsg_relay.reachable import ReachableRoutes
from imsg_relay.sealed import SealedRoutes
from imsg_relay.settings import (
    BLOB_READ_CHUNK,
    MAX_FETCH_BYTES,
    MAX_FETCH_LIMIT,
    MAX_OPEN_CHANNELS,
    MAX_PROVISIONING_MESSAGE,
    MAX_PROVISIONING_QUEUED,
    MAX_PROVISIONING_REQUEST,
    Settings,
)
from imsg_relay.storage.base import (
    AccountNotFound,
    BlobInfo,
    BlobNotFound,
    BlobQuotaExceeded,
    Bundle,
    ChannelNotFound,
    DeviceMismatch,
    DeviceRef,
    OneTimeKey,
    SignedKey,
    Storage,
    StorageConflict,
)
from imsg_relay.sweeper import run_sweeper
from imsg_relay.verifiers import build_verifier

log = logging.getLogger("imsg_relay")

API_VERSION = "1"
ACCOUNT_ID_LABEL = b"imsg/v1/account-id"
ACCOUNT_KEY_TAG = 0x06  # type tag of an Ed25519 account public key
ACCOUNT_KEY_BYTES = 33


def derive_account_id(account_key: bytes) -> str:
    return hashlib.sha256(ACCOUNT_ID_LABEL + account_key).digest()[:16].hex()


def _json(body: Any, status: int = 200) -> Response:
    return Response(dumps(body), status_code=status, media_type="application/json")


_CONFLICTS = {
    "account_exists": "an account with this account_id exists",
    "handle_taken": "another account holds this handle",
    "device_exists": "this account already has a device with this id",
}


def _conflict(exc: StorageConflict) -> RelayError:
    if exc.code == "token_taken":
        return bad_request("token is already in use; make a fresh random one")
    return RelayError(exc.code, _CONFLICTS[exc.code])


@dataclass(frozen=True)
class Operation:
    """One route: the data both the router and /openapi.json are built from."""

    method: str
    path: str
    handler: str
    summary: str
    ok: int
    response: str
    request: str | None = None
    auth: bool = True
    errors: tuple[int, ...] = ()
    query: tuple[tuple[str, dict[str, Any], str], ...] = ()
    path_params: tuple[tuple[str, dict[str, Any]], ...] = ()
    request_required: bool = True
    # OpenAPI links from the success response: (name, target operationId, parameters).
    links: tuple[tuple[str, str, dict[str, str]], ...] = ()
    # Raw bytes (application/octet-stream) instead of JSON: the request body of a blob part,
    # the response of a blob download (which also answers 206 to a Range).
    binary_request: bool = False
    binary_response: bool = False
    # Request headers a route reads: (name, schema, description).
    headers: tuple[tuple[str, dict[str, Any], str], ...] = ()


_ACCOUNT_PARAM = (("account_id", schema.ACCOUNT_ID),)
_DEVICE_PARAM = (("device_id", schema.DEVICE_ID),)
_CHANNEL_PARAM = (("channel", schema.CHANNEL),)
_BOX_PARAMS = (("channel", schema.CHANNEL), ("box", schema.BOX))
_BLOB_PARAM = (("blob_id", schema.BLOB_ID),)
_PART_PARAMS = (("blob_id", schema.BLOB_ID), ("index", schema.PART_INDEX))
_WAIT = (
    "wait",
    {"type": "integer", "minimum": 0, "maximum": 60, "default": 0},
    "seconds to hold the request while the mailbox is empty",
)

OPERATIONS: tuple[Operation, ...] = (
    Operation("GET", "/v1/health", "health", "relay liveness", 200, "Health", auth=False),
    Operation(
        "POST",
        "/v1/accounts",
        "register",
        "register an account and its first device",
        201,
        "DeviceCreated",
        "RegisterRequest",
        auth=False,
        errors=(409, 429),
    ),
    Operation(
        "GET",
        "/v1/accounts/{account_id}",
        "get_account",
        "an account's key, signed device list and devices",
        200,
        "Account",
        errors=(404,),
        path_params=_ACCOUNT_PARAM,
    ),
    # Reachable handles (blinded) and private discovery: routes in reachable.py.
    Operation(
        "POST",
        "/v1/handles",
        "add_handle",
        "claim a handle for the caller's account; a verifying relay sends it a code",
        200,
        "Handle",
        "HandleRequest",
        errors=(409, 502),
    ),
    Operation(
        "POST",
        "/v1/handles/verify",
        "verify_handle",
        "confirm a pending handle with the code it received",
        200,
        "Handle",
        "VerifyHandleRequest",
        errors=(403, 404, 409),
    ),
    Operation("GET", "/v1/handles", "list_handles", "the caller's account's handles (blinded)", 200, "Handles"),
    Operation(
        "PATCH",
        "/v1/handles/{handle_id}",
        "update_handle",
        "stop or resume receiving at a handle, or replace its sealed label",
        200,
        "Handle",
        "UpdateHandleRequest",
        errors=(404,),
        path_params=(("handle_id", schema.HANDLE_ID),),
    ),
    Operation(
        "DELETE",
        "/v1/handles/{handle_id}",
        "remove_handle",
        "remove a handle from the caller's account",
        200,
        "HandleRemoved",
        errors=(404,),
        path_params=(("handle_id", schema.HANDLE_ID),),
    ),
    Operation(
        "POST",
        "/v1/discovery/evaluate",
        "evaluate",
        "RFC 9497 OPRF evaluation of blinded elements (rate-limited per account; nothing is recorded)",
        200,
        "Evaluated",
        "EvaluateRequest",
        errors=(429,),
    ),
    Operation(
        "POST",
        "/v1/discovery/buckets",
        "buckets",
        "the blinded entries of discovery buckets, by tag prefix (nothing is recorded)",
        200,
        "Buckets",
        "BucketsRequest",
        errors=(409,),
    ),
    Operation(
        "PUT",
        "/v1/devices/{device_id}",
        "add_device",
        "add a device to the caller's account",
        201,
        "DeviceCreated",
        "AddDeviceRequest",
        errors=(409,),
        path_params=_DEVICE_PARAM,
    ),  # device_exists, too_many_devices
    Operation(
        "DELETE",
        "/v1/devices/{device_id}",
        "remove_device",
        "remove a device of the caller's account, with its keys and mailbox",
        200,
        "DeviceRemoved",
        "RemoveDeviceRequest",
        errors=(404,),
        path_params=_DEVICE_PARAM,
        request_required=False,
    ),
    Operation("PUT", "/v1/keys", "put_keys", "publish this device's prekeys", 200, "KeyCounts", "KeysRequest"),
    Operation("GET", "/v1/keys/count", "key_counts", "one-time prekeys held for this device", 200, "KeyCounts"),
    Operation(
        "GET",
        "/v1/keys/{account_id}",
        "get_bundles",
        "prekey bundles, one per device; one-time keys are served once",
        200,
        "Bundles",
        errors=(404, 429),
        path_params=_ACCOUNT_PARAM,
        query=(("device_id", schema.DEVICE_ID, "only this device"),),
    ),
    Operation(
        "PUT",
        "/v1/messages/{account_id}",
        "send",
        "store an envelope for every device of an account",
        200,
        "SendResult",
        "SendRequest",
        errors=(404, 409, 429),
        path_params=_ACCOUNT_PARAM,
    ),
    Operation(
        "GET",
        "/v1/messages",
        "fetch",
        "this device's mailbox, oldest first",
        200,
        "Messages",
        query=(
            _WAIT,
            (
                "limit",
                {"type": "integer", "minimum": 1, "maximum": MAX_FETCH_LIMIT, "default": 100},
                "most envelopes to return",
            ),
        ),
    ),
    Operation("POST", "/v1/messages/ack", "ack", "delete delivered envelopes", 200, "AckResult", "AckRequest"),
    # Device linking. Only the account's side authenticates: the new device has no
    # credential yet, and holding the channel id (shown to it as a pairing code) is its
    # capability. The relay sees opaque bytes in two boxes, each read once.
    Operation(
        "POST",
        "/v1/provisioning",
        "open_channel",
        "open a provisioning channel (10 minutes) to link a new device",
        201,
        "Channel",
        "ChannelRequest",
        errors=(409,),
        request_required=False,
        links=tuple(
            (name, target, {"channel": "$response.body#/channel"})
            for name, target in (
                ("PutMessage", "put_provisioning"),
                ("TakeMessage", "take_provisioning"),
                ("Close", "close_channel"),
            )
        ),
    ),
    Operation(
        "PUT",
        "/v1/provisioning/{channel}/{box}",
        "put_provisioning",
        "queue an opaque message in a channel's box; no authentication, the channel id is the capability",
        200,
        "ProvisioningQueued",
        "ProvisioningPut",
        auth=False,
        errors=(404, 429),
        path_params=_BOX_PARAMS,
    ),
    Operation(
        "GET",
        "/v1/provisioning/{channel}/{box}",
        "take_provisioning",
        "the oldest message of a channel's box, deleted as it is served (long poll); no authentication",
        200,
        "ProvisioningMessage",
        auth=False,
        errors=(404, 429),
        path_params=_BOX_PARAMS,
        query=(("wait", _WAIT[1], "seconds to hold the request while the box is empty"),),
    ),
    Operation(
        "DELETE",
        "/v1/provisioning/{channel}",
        "close_channel",
        "close a provisioning channel of the caller's account and delete its messages",
        200,
        "ChannelClosed",
        errors=(404,),
        path_params=_CHANNEL_PARAM,
    ),
    # Attachment blobs: opaque ciphertext, uploaded in parts (resumable), downloaded with
    # ranges by anyone holding the id, deleted 30 days after creation.
    Operation(
        "POST",
        "/v1/blobs",
        "create_blob",
        "start uploading an attachment blob; the relay draws its id",
        201,
        "BlobCreated",
        "BlobRequest",
        errors=(413,),
        links=tuple(
            (name, target, {"blob_id": "$response.body#/blob_id"})
            for name, target in (
                ("PutPart", "put_blob_part"),
                ("Status", "blob_status"),
                ("Complete", "complete_blob"),
                ("Download", "get_blob"),
                ("Delete", "delete_blob"),
            )
        ),
    ),
    Operation(
        "PUT",
        "/v1/blobs/{blob_id}/parts/{index}",
        "put_blob_part",
        "upload one part (exactly part_size bytes, the last one the remainder) of the "
        "caller's account's blob; re-sending a received part is allowed",
        200,
        "BlobParts",
        "BlobBytes",
        errors=(404, 409),
        path_params=_PART_PARAMS,
        binary_request=True,
    ),
    Operation(
        "GET",
        "/v1/blobs/{blob_id}/status",
        "blob_status",
        "an upload's parts received so far (to resume it)",
        200,
        "BlobStatus",
        errors=(404,),
        path_params=_BLOB_PARAM,
    ),
    Operation(
        "POST",
        "/v1/blobs/{blob_id}/complete",
        "complete_blob",
        "finish an upload once every part is received; the blob becomes read-only",
        200,
        "BlobCompleted",
        errors=(404, 409),
        path_params=_BLOB_PARAM,
    ),
    Operation(
        "GET",
        "/v1/blobs/{blob_id}",
        "get_blob",
        "download a complete blob (any registered device: the id is the capability); a single byte Range answers 206",
        200,
        "BlobBytes",
        errors=(404, 416),
        path_params=_BLOB_PARAM,
        binary_response=True,
    ),
    Operation(
        "DELETE",
        "/v1/blobs/{blob_id}",
        "delete_blob",
        "delete a blob of the caller's account, row and bytes, at once",
        200,
        "BlobDeleted",
        errors=(404,),
        path_params=_BLOB_PARAM,
    ),
    # Sealed sender (imsg_relay/sealed.py): certificates, access settings, sealed sends.
    Operation(
        "GET",
        "/v1/sealed/keys",
        "sealed_keys",
        "the relay's sender-certificate keys, oldest first, each endorsed by the one before",
        200,
        "SealedKeys",
        auth=False,
    ),
    Operation(
        "POST",
        "/v1/sealed/certificate",
        "sender_certificate",
        "a short-lived sender certificate for the calling device",
        200,
        "SenderCertificate",
        "CertificateRequest",
    ),
    Operation(
        "GET",
        "/v1/sealed/access",
        "get_sealed_access",
        "whether the caller's account has an access key set and allows anyone",
        200,
        "SealedAccess",
    ),
    Operation(
        "PUT",
        "/v1/sealed/access",
        "put_sealed_access",
        "set the caller's account's unidentified access key and allow-anyone flag",
        200,
        "SealedAccess",
        "SealedAccessRequest",
    ),
    Operation(
        "PUT",
        "/v1/sealed/messages/{account_id}",
        "send_sealed",
        "store sealed envelopes (no sender) for every device of an account; no "
        "credential, the recipient's access key instead",
        200,
        "SendResult",
        "SendRequest",
        auth=False,
        errors=(401, 409, 429),
        path_params=_ACCOUNT_PARAM,
        headers=(
            (
                "Unidentified-Access-Key",
                {"type": "string", "format": "byte"},
                "base64 of the recipient's 16-byte unidentified access key",
            ),
        ),
    ),
    # Profiles: one ciphertext per account, filed under a key id only holders of the
    # profile key can compute; reading needs no credential (the key id is the capability).
    Operation(
        "PUT",
        "/v1/profile/{key_id}",
        "put_profile",
        "store (replace) the caller's account's profile ciphertext",
        200,
        "ProfileStored",
        "ProfileBytes",
        errors=(409, 413, 415),
        path_params=PROFILE_PARAMS,
        binary_request=True,
    ),
    Operation(
        "GET",
        "/v1/profile/{account_id}/{key_id}",
        "get_profile",
        "an account's profile ciphertext, if it is filed under this key id; no authentication",
        200,
        "ProfileBytes",
        auth=False,
        errors=(404, 429),
        path_params=PROFILE_READ_PARAMS,
        binary_response=True,
    ),
)
# Backups and restore (backups.py), the privacy report (privacy.py).
OPERATIONS += tuple(Operation(**spec) for spec in backups.OPERATION_SPECS + privacy.OPERATION_SPECS)


class Relay(ReachableRoutes, SealedRoutes, ProfileRoutes, backups.BackupRoutes, privacy.PrivacyRoutes):
    def __init__(
        self, settings: Settings, storage: Storage, push: Push, clock: Callable[[], float], blobs: BlobStore
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.blobs = blobs
        self.push = push
        self.clock = clock
        self.secret = b""
        self.send_limit = RateLimiter(settings.send_rate, settings.send_burst)
        self.request_limit = RateLimiter(settings.request_rate, settings.request_burst)
        self.lookup_limit = RateLimiter(settings.lookup_rate, settings.lookup_burst)
        self.register_limit = RateLimiter(settings.register_rate, settings.register_burst)
        # Sealed sends have no credential: counted per recipient account instead.
        self.sealed_limit = RateLimiter(settings.sealed_rate, settings.sealed_burst)
        # Unauthenticated provisioning requests: per channel id, and relay-wide.
        self.provisioning_limit = RateLimiter(settings.provisioning_rate, settings.provisioning_burst)
        self.provisioning_global_limit = RateLimiter(
            settings.provisioning_global_rate, settings.provisioning_global_burst
        )
        self.openapi_body = b""
        self.init_reachable(build_verifier(settings))

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # helpers

    async def authenticate(self, request: Request) -> DeviceRef:
        digest = bearer_token_hash(request.headers.get("authorization"))
        device = await self.storage.authenticate(digest)
        if device is None:
            raise RelayError("unauthorized", "unknown token")
        self.request_limit.check(device)
        return device

    async def body(self, request: Request, name: str, required: bool = True) -> dict[str, Any]:
        raw = await request.body()
        if not raw and not required:
            return {}
        ctype = request.headers.get("content-type", "")
        if ctype.split(";", 1)[0].strip().lower() != "application/json":
            raise RelayError("unsupported_media_type", "request body must be application/json")
        try:
            data = loads(raw)
        except (ValueError, RecursionError):
            raise bad_request("request body is not valid json") from None
        return schema.validate(schema.S[name], data)

    @staticmethod
    def path_param(request: Request, name: str, spec: dict[str, Any]) -> Any:
        raw = request.path_params[name]
        if spec["type"] == "integer":
            raw = _int(raw, name)
        return schema.validate(spec, raw, name)

    @staticmethod
    def query_int(request: Request, name: str, spec: dict[str, Any], default: Any) -> Any:
        raw = request.query_params.get(name)
        if raw is None:
            return default
        return schema.validate(spec, _int(raw, name), name)

    # routes

    async def health(self, request: Request) -> Response:
        return _json({"status": "ok", "version": API_VERSION})

    async def openapi(self, request: Request) -> Response:
        return Response(self.openapi_body, media_type="application/json")

    async def register(self, request: Request) -> Response:
        self.register_limit.check("register")
        data = await self.body(request, "RegisterRequest")
        key = data["account_key"]
        if len(key) != ACCOUNT_KEY_BYTES or key[0] != ACCOUNT_KEY_TAG:
            raise bad_request("account_key must be 33 bytes: 0x06 then an ed25519 public key")
        if derive_account_id(key) != data["account_id"]:
            raise bad_request("account_id is not derived from account_key")
        raw_token = decode_token(data["token"])
        if raw_token is None:
            raise bad_request("token must be 32 bytes, base64url without padding")
        label = data.get("label", b"")
        handle, code = await self.new_handle_row(data["account_id"], data["handle"], label)
        try:
            await self.storage.create_account(
                data["account_id"],
                key,
                handle,
                data["device_list"],
                data["device_id"],
                token_hash(raw_token),
                self.now_ms(),
            )
        except StorageConflict as exc:
            raise _conflict(exc) from None
        created = {"account_id": data["account_id"], "device_id": data["device_id"], "handle_state": handle.state}
        if code is not None:  # registered either way; `POST /v1/handles` sends a new code
            try:
                await self.send_code(data["handle"], code)
                created["code_sent"] = True
            except RelayError:
                created["code_sent"] = False
        return _json(created, 201)

    async def get_account(self, request: Request) -> Response:
        await self.authenticate(request)
        account_id = self.path_param(request, "account_id", schema.ACCOUNT_ID)
        account = await self.storage.get_account(account_id)
        if account is None:
            raise RelayError("not_found", "no such account")
        return _json(
            {
                "account_id": account.account_id,
                "account_key": schema.b64(account.account_key),
                "device_list": schema.b64(account.device_list),
                "devices": list(account.devices),
            }
        )

    async def add_device(self, request: Request) -> Response:
        device = await self.authenticate(request)
        device_id = self.path_param(request, "device_id", schema.DEVICE_ID)
        data = await self.body(request, "AddDeviceRequest")
        raw_token = decode_token(data["token"])
        if raw_token is None:
            raise bad_request("token must be 32 bytes, base64url without padding")
        cap = self.settings.max_devices
        try:
            await self.storage.add_device(
                device.account_id, device_id, token_hash(raw_token), data["device_list"], self.now_ms(), max_devices=cap
            )
        except StorageConflict as exc:
            if exc.code == "too_many_devices":
                raise RelayError(
                    "too_many_devices",
                    f"this account already has {cap} devices, the most it may have; remove one first",
                    limit=cap,
                ) from None
            raise _conflict(exc) from None
        except AccountNotFound:  # the caller's account went away under it
            raise RelayError("unauthorized", "unknown token") from None
        return _json({"account_id": device.account_id, "device_id": device_id}, 201)

    async def remove_device(self, request: Request) -> Response:
        device = await self.authenticate(request)
        device_id = self.path_param(request, "device_id", schema.DEVICE_ID)
        data = await self.body(request, "RemoveDeviceRequest", required=False)
        try:
            await self.storage.remove_device(device.account_id, device_id, data.get("device_list"))
        except AccountNotFound:
            raise RelayError("not_found", "no such device on this account") from None
        return _json({"account_id": device.account_id, "device_id": device_id})

    async def put_keys(self, request: Request) -> Response:
        device = await self.authenticate(request)
        data = await self.body(request, "KeysRequest")

        def signed(d: dict[str, Any] | None) -> SignedKey | None:
            return None if d is None else SignedKey(d["key_id"], d["public_key"], d["signature"])

        counts = await self.storage.put_keys(
            device,
            signed(data.get("signed_prekey")),
            signed(data.get("kem_last_resort")),
            _unique_keys(data.get("one_time", []), signed=False),
            _unique_keys(data.get("kem_one_time", []), signed=True),
        )
        return _json({"one_time": counts.one_time, "kem_one_time": counts.kem_one_time})

    async def key_counts(self, request: Request) -> Response:
        device = await self.authenticate(request)
        counts = await self.storage.key_counts(device)
        return _json({"one_time": counts.one_time, "kem_one_time": counts.kem_one_time})

    async def get_bundles(self, request: Request) -> Response:
        device = await self.authenticate(request)
        self.lookup_limit.check(device)
        account_id = self.path_param(request, "account_id", schema.ACCOUNT_ID)
        device_id = self.query_int(request, "device_id", schema.DEVICE_ID, None)
        try:
            bundles = await self.storage.take_bundles(account_id, device_id)
        except AccountNotFound:
            raise RelayError("not_found", "no such account or device") from None
        return _json({"account_id": account_id, "devices": [_bundle_json(b) for b in bundles]})

    async def send(self, request: Request) -> Response:
        device = await self.authenticate(request)
        self.send_limit.check(device)
        account_id = self.path_param(request, "account_id", schema.ACCOUNT_ID)
        data = await self.body(request, "SendRequest")
        bodies = self.envelope_bodies(data)
        exclude = device.device_id if account_id == device.account_id else None
        try:
            stored = await self.storage.store_envelopes(account_id, data["message_id"], bodies, exclude, self.now_ms())
        except AccountNotFound:
            raise RelayError("not_found", "no such account") from None
        except DeviceMismatch as exc:
            raise RelayError("device_mismatch", "device list changed", missing=exc.missing, extra=exc.extra) from None
        if bodies:
            await self.push.notify([(account_id, d) for d in bodies])
        return _json({"message_id": data["message_id"], "stored": stored})

    def envelope_bodies(self, data: dict[str, Any]) -> dict[int, bytes]:
        limit = self.settings.max_envelope
        bodies: dict[int, bytes] = {}
        for m in data["messages"]:
            if m["device_id"] in bodies:
                raise bad_request(f"device {m['device_id']} is addressed twice")
            if len(m["body"]) > limit:
                raise RelayError(
                    "payload_too_large", f"envelope for device {m['device_id']} is over {limit} bytes", limit=limit
                )
            bodies[m["device_id"]] = m["body"]
        return bodies

    async def fetch(self, request: Request) -> Response:
        device = await self.authenticate(request)
        op = _BY_HANDLER["fetch"]
        wait = self.query_int(request, "wait", op.query[0][1], 0)
        wait = min(wait, self.settings.max_wait)
        limit = self.query_int(request, "limit", op.query[1][1], 100)
        messages, more = await self._fetch(device, limit)
        if not messages and wait > 0:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait
            # Register first, then look again: an envelope stored in between still wakes us.
            with self.push.waiter((device.account_id, device.device_id)) as event:
                while True:
                    messages, more = await self._fetch(device, limit)
                    remaining = deadline - loop.time()
                    if messages or remaining <= 0:
                        break
                    try:
                        await asyncio.wait_for(event.wait(), remaining)
                    except TimeoutError:
                        pass
                    event.clear()
        return _json(
            {
                "messages": [
                    {"message_id": m.message_id, "body": schema.b64(m.body), "received_at": m.received_at}
                    for m in messages
                ],
                "more": more,
            }
        )

    async def _fetch(self, device: DeviceRef, limit: int) -> tuple[list[Any], bool]:
        cutoff = self.now_ms() - self.settings.retention_ms
        return await self.storage.fetch(device, limit, cutoff, MAX_FETCH_BYTES)

    async def ack(self, request: Request) -> Response:
        device = await self.authenticate(request)
        data = await self.body(request, "AckRequest")
        acked = await self.storage.ack(device, data["message_ids"])
        return _json({"acked": acked})

    # provisioning (device linking)

    async def open_channel(self, request: Request) -> Response:
        device = await self.authenticate(request)
        await self.body(request, "ChannelRequest", required=False)
        now = self.now_ms()
        expires_at = now + self.settings.provisioning_ttl_ms
        while True:  # 64 random bits: a collision is retried, never expected
            channel = secrets.token_hex(8)
            try:
                await self.storage.create_channel(channel, device.account_id, now, expires_at, MAX_OPEN_CHANNELS)
            except StorageConflict as exc:
                if exc.code == "channel_exists":
                    continue
                raise RelayError(
                    "too_many_channels",
                    f"this account already has {MAX_OPEN_CHANNELS} open provisioning channels;"
                    " close one or wait for it to expire",
                    limit=MAX_OPEN_CHANNELS,
                ) from None
            return _json({"channel": channel, "expires_at": expires_at}, 201)

    def _provisioning_target(self, request: Request) -> tuple[str, str]:
        # Rate limits before any storage access, keyed by the channel id, never by address.
        self.provisioning_global_limit.check("provisioning")
        channel = self.path_param(request, "channel", schema.CHANNEL)
        box = self.path_param(request, "box", schema.BOX)
        self.provisioning_limit.check(channel)
        return channel, box

    async def put_provisioning(self, request: Request) -> Response:
        channel, box = self._provisioning_target(request)
        data = await self.body(request, "ProvisioningPut")
        if len(data["body"]) > MAX_PROVISIONING_MESSAGE:
            raise RelayError(
                "payload_too_large",
                f"provisioning message is over {MAX_PROVISIONING_MESSAGE} bytes",
                limit=MAX_PROVISIONING_MESSAGE,
            )
        try:
            queued = await self.storage.put_provisioning(
                channel, box, data["body"], self.now_ms(), MAX_PROVISIONING_QUEUED
            )
        except ChannelNotFound:
            raise _no_channel() from None
        except StorageConflict:  # box_full
            raise RelayError(
                "box_full",
                f"{MAX_PROVISIONING_QUEUED} messages already wait in this box;"
                " retry once the other device has read them",
                headers={"Retry-After": "1"},
                retry_after=1,
                limit=MAX_PROVISIONING_QUEUED,
            ) from None
        await self.push.notify([_box_wakeup(channel, box)])
        return _json({"queued": queued})

    async def take_provisioning(self, request: Request) -> Response:
        channel, box = self._provisioning_target(request)
        op = _BY_HANDLER["take_provisioning"]
        wait = min(self.query_int(request, "wait", op.query[0][1], 0), self.settings.max_wait)
        body = await self._take(channel, box)
        if body is None and wait > 0:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait
            # As in fetch: register, then look again, so a put in between still wakes us.
            with self.push.waiter(_box_wakeup(channel, box)) as event:
                while True:
                    body = await self._take(channel, box)
                    remaining = deadline - loop.time()
                    if body is not None or remaining <= 0:
                        break
                    try:
                        await asyncio.wait_for(event.wait(), remaining)
                    except TimeoutError:
                        pass
                    event.clear()
        return _json({"body": None if body is None else schema.b64(body)})

    async def _take(self, channel: str, box: str) -> bytes | None:
        try:
            return await self.storage.take_provisioning(channel, box, self.now_ms())
        except ChannelNotFound:
            raise _no_channel() from None

    async def close_channel(self, request: Request) -> Response:
        device = await self.authenticate(request)
        channel = self.path_param(request, "channel", schema.CHANNEL)
        try:
            await self.storage.close_channel(channel, device.account_id, self.now_ms())
        except ChannelNotFound:
            raise _no_channel() from None
        finally:
            # Waiting readers re-read at once: they answer 404 instead of waiting out the poll.
            await self.push.notify([_box_wakeup(channel, b) for b in schema.BOX["enum"]])
        return _json({"channel": channel})

    # attachment blobs. Nothing here logs a blob id, a size with an account, or any byte.

    def _blob_live_after(self) -> int:
        return self.now_ms() - self.settings.blob_retention_ms

    def _expires_at(self, info: BlobInfo) -> int:
        return info.created_at + self.settings.blob_retention_ms

    async def _own_blob(self, request: Request, device: DeviceRef) -> BlobInfo:
        blob_id = self.path_param(request, "blob_id", schema.BLOB_ID)
        info = await self.storage.get_blob(blob_id, self._blob_live_after())
        if info is None or info.account_id != device.account_id:
            raise _no_blob()
        return info

    async def create_blob(self, request: Request) -> Response:
        device = await self.authenticate(request)
        data = await self.body(request, "BlobRequest")
        size, cap, quota = data["size"], self.settings.max_blob, self.settings.blob_quota
        if size > cap:
            raise RelayError("payload_too_large", f"a blob may be at most {cap} bytes", limit=cap)
        now = self.now_ms()
        part_size = self.settings.blob_part_size
        while True:  # 128 random bits: a collision is retried, never expected
            blob_id = secrets.token_hex(16)
            try:
                await self.storage.create_blob(
                    blob_id, device.account_id, size, part_size, now, now - self.settings.blob_retention_ms, quota
                )
            except BlobQuotaExceeded as exc:
                raise RelayError(
                    "quota_exceeded",
                    f"this account's unexpired blobs would pass its {quota} byte "
                    "quota; delete some or wait for them to expire",
                    limit=quota,
                    used=exc.used,
                ) from None
            except StorageConflict:  # blob_exists
                continue
            break
        # The row first, then the file: a crash in between leaves a row without a file,
        # which the sweeper deletes at expiry, never a file nothing points to.
        try:
            await self.blobs.create(blob_id, size)
        except BaseException:
            await self.storage.delete_blob(blob_id, device.account_id)
            raise
        return _json(
            {
                "blob_id": blob_id,
                "size": size,
                "part_size": part_size,
                "parts": -(-size // part_size),
                "expires_at": now + self.settings.blob_retention_ms,
            },
            201,
        )

    async def put_blob_part(self, request: Request) -> Response:
        device = await self.authenticate(request)
        index = self.path_param(request, "index", schema.PART_INDEX)
        ctype = request.headers.get("content-type", "")
        if ctype.split(";", 1)[0].strip().lower() != "application/octet-stream":
            raise RelayError("unsupported_media_type", "a blob part must be application/octet-stream")
        info = await self._own_blob(request, device)
        if info.complete:
            raise _blob_complete()
        if index >= info.parts:
            raise bad_request(f"index is past the last part ({info.parts - 1})")
        offset = index * info.part_size
        expected = min(info.part_size, info.size - offset)
        declared = request.headers.get("content-length")
        if declared is not None:  # a number: the body cap middleware checked it
            if int(declared) > expected:
                raise _part_too_long(index, expected)
            if int(declared) < expected:
                raise _part_too_short(index, expected)
        try:
            writer = await self.blobs.open_write(info.blob_id, offset)
        except BlobMissing:
            raise _no_blob() from None
        got = 0
        try:
            async for chunk in request.stream():
                got += len(chunk)
                if got > expected:  # refused as it overflows, before the rest is read
                    raise _part_too_long(index, expected)
                await writer.write(chunk)
            if got < expected:
                raise _part_too_short(index, expected)
            await writer.sync()  # durable before it is recorded as received
        except ClientDisconnect:
            raise _part_too_short(index, expected) from None
        finally:
            await writer.close()
        try:
            info = await self.storage.add_blob_part(info.blob_id, device.account_id, index, self._blob_live_after())
        except BlobNotFound:
            raise _no_blob() from None
        except StorageConflict:  # completed while this part streamed in
            raise _blob_complete() from None
        return _json({"received": list(info.received), "complete": len(info.received) == info.parts})

    async def blob_status(self, request: Request) -> Response:
        device = await self.authenticate(request)
        info = await self._own_blob(request, device)
        return _json(
            {
                "blob_id": info.blob_id,
                "size": info.size,
                "part_size": info.part_size,
                "parts": info.parts,
                "received": list(info.received),
                "complete": info.complete,
                "expires_at": self._expires_at(info),
            }
        )

    async def complete_blob(self, request: Request) -> Response:
        device = await self.authenticate(request)
        info = await self._own_blob(request, device)
        if not info.complete:  # completing again answers the same (idempotent)
            have = set(info.received)
            missing = [i for i in range(info.parts) if i not in have]
            if missing:
                raise RelayError("incomplete", f"{len(missing)} of {info.parts} parts are missing", missing=missing)
            try:
                digest = await self.blobs.sha256(info.blob_id)
            except BlobMissing:
                raise _no_blob() from None
            try:
                info = await self.storage.complete_blob(
                    info.blob_id, device.account_id, digest, self._blob_live_after()
                )
            except BlobNotFound:
                raise _no_blob() from None
        assert info.sha256 is not None
        return _json({"blob_id": info.blob_id, "size": info.size, "sha256": info.sha256.hex()})

    async def get_blob(self, request: Request) -> Response:
        await self.authenticate(request)
        blob_id = self.path_param(request, "blob_id", schema.BLOB_ID)
        info = await self.storage.get_blob(blob_id, self._blob_live_after())
        if info is None or not info.complete:
            raise _no_blob()
        span = _byte_range(request.headers.get("range"), info.size)
        try:
            reader = await self.blobs.open_read(blob_id)
        except BlobMissing:
            raise _no_blob() from None
        return _BlobResponse(reader, info.size, span, head=request.method == "HEAD")

    async def delete_blob(self, request: Request) -> Response:
        device = await self.authenticate(request)
        blob_id = self.path_param(request, "blob_id", schema.BLOB_ID)
        # Row first (nobody can read or write it after), then the bytes.
        if not await self.storage.delete_blob(blob_id, device.account_id):
            raise _no_blob()
        await self.blobs.delete(blob_id)
        return _json({"blob_id": blob_id})


class _BlobResponse(Response):
    """A blob's bytes (or one range of them), read and sent one chunk at a time; stops
    reading as soon as the client goes away. Always closes the reader."""

    def __init__(self, reader: BlobReader, size: int, span: tuple[int, int] | None, head: bool) -> None:
        self.reader = reader
        self.head = head
        self.start, self.end = span if span is not None else (0, size)
        self.status_code = 206 if span is not None else 200
        self.background = None
        headers = {
            "Content-Length": str(self.end - self.start),
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if span is not None:
            headers["Content-Range"] = f"bytes {self.start}-{self.end - 1}/{size}"
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.ensure_future(watch())
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            if not self.head:
                async for chunk in self.reader.chunks(self.start, self.end, BLOB_READ_CHUNK):
                    if gone.is_set():
                        return
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            await self.reader.close()


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end) of one `bytes=a-b`, `a-` or `-n` range, end exclusive; None to send the
    whole blob (no Range, another unit, several ranges or a malformed one: RFC 9110 lets a
    server ignore those). Unsatisfiable: 416 with `Content-Range: bytes */size`."""
    if header is None:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if (
        not dash
        or not all(p.isascii() and p.isdigit() for p in (first, last) if p)
        or not (first or last)
        or len(first) > 18
        or len(last) > 18
    ):
        return None
    if not first:  # the last n bytes
        n = int(last)
        if n == 0:
            raise _unsatisfiable(size)
        return max(0, size - n), size
    start = int(first)
    end = size if not last else int(last) + 1
    if last and end <= start:
        return None  # b < a: malformed, ignored
    if start >= size:
        raise _unsatisfiable(size)
    return start, min(end, size)


def _unsatisfiable(size: int) -> RelayError:
    return RelayError(
        "range_not_satisfiable",
        f"the range is outside the blob's {size} bytes",
        headers={"Content-Range": f"bytes */{size}"},
    )


def _no_blob() -> RelayError:
    return RelayError("not_found", "no such blob, or it has expired (or is not complete, or not this account's)")


def _blob_complete() -> RelayError:
    return RelayError("blob_complete", "this blob is complete and read-only")


def _part_too_long(index: int, expected: int) -> RelayError:
    return RelayError("payload_too_large", f"part {index} must be exactly {expected} bytes", limit=expected)


def _part_too_short(index: int, expected: int) -> RelayError:
    return bad_request(f"part {index} must be exactly {expected} bytes; it was shorter")


_BY_HANDLER = {op.handler: op for op in OPERATIONS}


def _no_channel() -> RelayError:
    return RelayError("not_found", "no such provisioning channel, or it has expired")


def _box_wakeup(channel: str, box: str) -> tuple[str, int]:
    """The push key of a provisioning box. A digest of the channel id, not the id itself,
    so the capability never travels over pub/sub; the "p" prefix keeps it apart from the
    32-hex account ids of device mailboxes."""
    digest = hashlib.sha256(b"imsg/v1/provisioning-wakeup" + channel.encode()).hexdigest()
    return "p" + digest[:31], 0 if box == "new" else 1


def _int(raw: str, name: str) -> int:
    # Plain decimal digits only: int() would also take "+1", " 1" and "1_0".
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise bad_request(f"{name} must be a non-negative decimal integer")
    return int(raw)


def _unique_keys(items: list[dict[str, Any]], signed: bool) -> list[OneTimeKey]:
    # A key_id given twice in one list: the last one wins, as it would across requests.
    keys = {k["key_id"]: OneTimeKey(k["key_id"], k["public_key"], k["signature"] if signed else None) for k in items}
    return list(keys.values())


def _bundle_json(b: Bundle) -> dict[str, Any]:
    sp = b.signed_prekey
    kem = None
    if b.kem_prekey is not None:
        kem = {
            "key_id": b.kem_prekey.key_id,
            "public_key": schema.b64(b.kem_prekey.public_key),
            "signature": schema.b64(b.kem_prekey.signature),
            "last_resort": b.kem_last_resort,
        }
    one_time = None
    if b.one_time is not None:
        one_time = {"key_id": b.one_time.key_id, "public_key": schema.b64(b.one_time.public_key)}
    return {
        "device_id": b.device_id,
        "signed_prekey": {
            "key_id": sp.key_id,
            "public_key": schema.b64(sp.public_key),
            "signature": schema.b64(sp.signature),
        },
        "one_time": one_time,
        "kem_prekey": kem,
    }


def _routes(relay: Relay) -> list[Route]:
    """One route per path, dispatching on the method, so a 405 lists in `Allow` every method
    the path has. Static paths come first: /v1/keys/count before /v1/keys/{account_id}."""
    by_path: dict[str, dict[str, Callable[[Request], Awaitable[Response]]]] = {}
    for op in sorted(OPERATIONS, key=lambda o: "{" in o.path):
        by_path.setdefault(op.path, {})[op.method] = getattr(relay, op.handler)
    static = {path: methods for path, methods in by_path.items() if "{" not in path}
    routes = []
    for path, handlers in by_path.items():
        # Static paths this parametrised one would also match (PUT /v1/messages/ack would
        # reach the send route as account_id "ack"): they answer 405 with their own Allow.
        pattern = re.compile("^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(path)) + "$")
        shadowed = {p: ", ".join(sorted(m)) for p, m in static.items() if p != path and pattern.match(p)}
        routes.append(Route(path, _dispatch(handlers, shadowed), methods=list(handlers)))
    return routes


def _dispatch(
    handlers: dict[str, Callable[[Request], Awaitable[Response]]], shadowed: dict[str, str]
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        allow = shadowed.get(request.url.path)
        if allow is not None:
            raise HTTPException(405, headers={"Allow": allow})
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return endpoint


def create_app(
    settings: Settings,
    storage: Storage | None = None,
    *,
    push: Push | None = None,
    clock: Callable[[], float] = time.time,
    blobs: BlobStore | None = None,
) -> Starlette:
    """The relay as an ASGI app. It opens `storage` (SQLite in `settings.data_dir` when none
    is given) at startup and closes it at shutdown. Blobs live in `blobs` (files under
    `settings.data_dir / "blobs"` when none is given)."""
    from imsg_relay.blobs.filesystem import FilesystemBlobStore
    from imsg_relay.openapi import build_openapi
    from imsg_relay.storage.sqlite import SQLiteStorage

    if storage is None:
        if settings.database_url:
            from imsg_relay.storage.postgres import PostgresStorage

            storage = PostgresStorage(settings.database_url)
        else:
            storage = SQLiteStorage(settings.data_dir)
    if push is None:
        if settings.redis_url:
            from imsg_relay.push_redis import RedisPush

            push = RedisPush(settings.redis_url)
        else:
            push = InProcessPush()
    if blobs is None:
        blobs = FilesystemBlobStore(settings.data_dir / "blobs")
    relay = Relay(settings, storage, push, clock, blobs)
    relay.openapi_body = json.dumps(build_openapi(OPERATIONS, settings)).encode()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        relay.secret = load_or_create_secret(settings.secret_path)
        relay.load_discovery_key()
        await relay.storage.open()
        await relay.push.start()
        sweeper = asyncio.create_task(
            run_sweeper(
                relay.storage,
                settings.retention_ms,
                settings.sweep_interval,
                clock,
                relay.blobs,
                settings.blob_retention_ms,
            )
        )
        try:
            yield {"relay": relay}
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await relay.push.stop()
            await relay.storage.close()

    routes = [Route("/openapi.json", relay.openapi, methods=["GET"], include_in_schema=False)]
    routes += _routes(relay)
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(CatchAllMiddleware),
            Middleware(
                BodyLimitMiddleware,
                max_body=settings.max_body,
                overrides=(
                    ("PUT", "/v1/provisioning/", MAX_PROVISIONING_REQUEST),
                    # blob parts stream to disk: capped at a part
                    ("PUT", "/v1/blobs/", settings.blob_part_size),
                    # a backup streams to the blob store
                    ("PUT", "/v1/backup", settings.max_backup),
                ),
            ),
        ],
        exception_handlers={
            RelayError: relay_error_handler,
            HTTPException: http_exception_handler,
            StorageUnavailable: storage_unavailable_handler,
        },
        lifespan=lifespan,
    )
    app.state.relay = relay
    return app
