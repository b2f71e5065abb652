"""Backups at the relay, and enrolling a restored device (docs/RELAY-API.md, "Backups").
The backup's bytes stream to the blob store; its row is in storage.

The relay keeps one backup per account: opaque ciphertext, in the blob store under a fresh
blob id per upload (so a replaced backup is swapped in one row update, never half written),
recorded in the `backups` table with SHA-256 of an *access token*. Only a holder of the
recovery code can derive that token, and it is all the relay learns: the key that decrypts
the backup is derived from the code separately.

A device restoring a backup has no relay credential. It proves two things at once:
- the access token (`Authorization: Bearer`), which says it holds the recovery code, and
- an Ed25519 signature by the account key (the relay holds its public half from
  registration) over LABEL_RESTORE_DEVICE || the request, which says it holds the account
  key; the signature binds the device id, the new device's token and device list, and a
  time stamp the relay accepts for RESTORE_SIGNATURE_WINDOW_MS.
Neither alone enrols a device. A relay-side attacker without the code sees only the hash.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from typing import Annotated

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from msgspec import Meta, Struct
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from imsg_relay import schema
from imsg_relay.auth import bearer_token_hash, decode_token
from imsg_relay.blobs.base import BlobMissing
from imsg_relay.context import RelayContext
from imsg_relay.errors import RelayError, bad_request
from imsg_relay.operation import Call, json_response, media_type
from imsg_relay.routes.accounts import account_json, conflict, new_token_hash, too_many_devices
from imsg_relay.routes.blobs import BlobResponse
from imsg_relay.storage.base import AccountNotFound, BackupInfo, StorageConflict

# The signature context of a restore enrolment (docs/PROTOCOL.md, "Backups"); the client
# spells the same bytes in imsg/protocol/backup.py.
LABEL_RESTORE_DEVICE = b"imsg/v1/sig/restore-device"
# A signed enrolment is accepted this long either side of the relay's clock: long enough
# for a slow clock, short enough that a captured request is soon worthless.
RESTORE_SIGNATURE_WINDOW_MS = 5 * 60 * 1000
AccessHash = Annotated[
    str, schema.pattern("^[0-9a-f]{64}$", "SHA-256 of the backup access token, 64 lowercase hex characters")
]


class BackupStored(Struct):
    size: Annotated[int, Meta(ge=1)]
    created_at: Annotated[int, Meta(ge=0, description="first upload")]
    updated_at: Annotated[int, Meta(ge=0, description="latest upload")]


class BackupDeleted(Struct):
    deleted: bool


class RestoreDeviceRequest(Struct):
    token: schema.Token
    device_list: schema.DeviceList
    signed_at: schema.TimeMs
    signature: Annotated[
        bytes,
        Meta(max_length=96, description="Ed25519 signature by the account key over LABEL_RESTORE_DEVICE || statement"),
    ]


def restore_statement(account_id: str, device_id: int, token: bytes, device_list: bytes, signed_at: int) -> bytes:
    return (
        account_id.encode("ascii")
        + struct.pack(">I", device_id)
        + hashlib.sha256(token).digest()
        + hashlib.sha256(device_list).digest()
        + struct.pack(">Q", signed_at)
    )


def _stored(info: BackupInfo) -> dict[str, int]:
    return {"size": info.size, "created_at": info.created_at, "updated_at": info.updated_at}


def _no_backup() -> RelayError:
    return RelayError("not_found", "no backup for this recovery code (or it was deleted)")


async def put_backup(relay: RelayContext, call: Call) -> Response:
    device = await relay.authenticate(call.request)
    raw = call.query("access_hash")
    if raw is None:
        raise bad_request("access_hash is missing")
    access_hash = bytes.fromhex(raw)
    if media_type(call.request) != "application/octet-stream":
        raise RelayError("unsupported_media_type", "a backup must be application/octet-stream")
    declared = call.request.headers.get("content-length")
    if declared is None or not declared.isdigit() or int(declared) < 1:
        raise bad_request("a backup upload needs a Content-Length of at least 1")
    size = int(declared)  # the body cap middleware already refused one over max_backup
    blob_id = secrets.token_hex(16)
    await relay.blobs.create(blob_id, size)
    stored = False
    try:
        writer = await relay.blobs.open_write(blob_id, 0)
        got = 0
        try:
            async for chunk in call.request.stream():
                got += len(chunk)
                if got > size:
                    raise bad_request("the body is longer than its Content-Length")
                await writer.write(chunk)
            if got < size:
                raise bad_request("the body is shorter than its Content-Length")
            await writer.sync()  # durable before the row points at it
        except ClientDisconnect:
            raise bad_request("the upload was cut short") from None
        finally:
            await writer.close()
        try:
            old = await relay.storage.put_backup(device.account_id, access_hash, blob_id, size, relay.now_ms())
        except StorageConflict:
            raise RelayError(
                "backup_access_taken", "another account's backup has this access hash; make a new recovery code"
            ) from None
        stored = True
    finally:
        if not stored:
            await relay.blobs.delete(blob_id)
    if old is not None and old != blob_id:
        await relay.blobs.delete(old)
    info = await relay.storage.get_backup(device.account_id)
    if info is None:  # deleted by another device in between
        raise _no_backup()
    return json_response(_stored(info))


async def backup_status(relay: RelayContext, call: Call) -> Response:
    device = await relay.authenticate(call.request)
    info = await relay.storage.get_backup(device.account_id)
    if info is None:
        raise RelayError("not_found", "this account has no backup")
    return json_response(_stored(info))


async def delete_backup(relay: RelayContext, call: Call) -> Response:
    device = await relay.authenticate(call.request)
    # Row first (nobody can fetch it after), then the bytes.
    blob_id = await relay.storage.delete_backup(device.account_id)
    if blob_id is not None:
        await relay.blobs.delete(blob_id)
    return json_response({"deleted": blob_id is not None})


async def _restoring(relay: RelayContext, call: Call) -> BackupInfo:
    """The backup the bearer access token opens; relay-wide rate-limited like
    registration (there is no credential to count against)."""
    relay.limits.register.check("restore")
    info = await relay.storage.backup_by_access(bearer_token_hash(call.request.headers.get("authorization")))
    if info is None:
        raise _no_backup()
    return info


async def restore_account(relay: RelayContext, call: Call) -> Response:
    info = await _restoring(relay, call)
    account = await relay.storage.get_account(info.account_id)
    if account is None:
        raise _no_backup()
    return json_response(account_json(account))


async def restore_backup(relay: RelayContext, call: Call) -> Response:
    info = await _restoring(relay, call)
    try:
        reader = await relay.blobs.open_read(info.blob_id)
    except BlobMissing:
        raise _no_backup() from None
    return BlobResponse(reader, info.size, None, head=call.request.method == "HEAD")


async def restore_device(relay: RelayContext, call: Call) -> Response:
    info = await _restoring(relay, call)
    device_id = call.path("device_id")
    data = await call.body(RestoreDeviceRequest)
    raw_token = decode_token(data.token)
    if raw_token is None:
        raise bad_request("token must be 32 bytes, base64url without padding")
    now = relay.now_ms()
    if abs(now - data.signed_at) > RESTORE_SIGNATURE_WINDOW_MS:
        raise RelayError(
            "unauthorized", "the enrolment signature is stale (or the clock is off by more than five minutes)"
        )
    account = await relay.storage.get_account(info.account_id)
    if account is None:
        raise _no_backup()
    statement = restore_statement(account.account_id, device_id, raw_token, data.device_list, data.signed_at)
    try:
        Ed25519PublicKey.from_public_bytes(account.account_key[1:]).verify(
            data.signature, LABEL_RESTORE_DEVICE + statement
        )
    except (InvalidSignature, ValueError):
        raise RelayError("unauthorized", "the enrolment is not signed by the account key") from None
    cap = relay.settings.max_devices
    try:
        await relay.storage.add_device(
            account.account_id, device_id, new_token_hash(data.token), data.device_list, now, max_devices=cap
        )
    except StorageConflict as exc:
        if exc.code == "too_many_devices":
            raise too_many_devices(cap) from None
        raise conflict(exc) from None
    except AccountNotFound:
        raise _no_backup() from None
    return json_response({"account_id": account.account_id, "device_id": device_id}, 201)
