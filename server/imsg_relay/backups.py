"""Backups at the relay, and enrolling a restored device (docs/RELAY-API.md, "Backups").

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
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from imsg_relay import schema
from imsg_relay.auth import bearer_token_hash, decode_token, token_hash
from imsg_relay.blobs.base import BlobMissing
from imsg_relay.errors import RelayError, bad_request
from imsg_relay.jsonio import dumps
from imsg_relay.storage.base import AccountNotFound, BackupInfo, StorageConflict

# The signature context of a restore enrolment (docs/PROTOCOL.md, "Backups"); the client
# spells the same bytes in imsg/protocol/backup.py.
LABEL_RESTORE_DEVICE = b"imsg/v1/sig/restore-device"
# A signed enrolment is accepted this long either side of the relay's clock: long enough
# for a slow clock, short enough that a captured request is soon worthless.
RESTORE_SIGNATURE_WINDOW_MS = 5 * 60 * 1000
ACCESS_HASH = {
    "type": "string",
    "pattern": r"^[0-9a-f]{64}$",
    "description": "SHA-256 of the backup access token, 64 lowercase hex characters",
}

schema.S["BackupStored"] = {
    "type": "object",
    "required": ["size", "created_at", "updated_at"],
    "properties": {
        "size": {"type": "integer", "minimum": 1},
        "created_at": {**schema.TIME_MS, "description": "first upload"},
        "updated_at": {**schema.TIME_MS, "description": "latest upload"},
    },
}
schema.S["BackupDeleted"] = {"type": "object", "required": ["deleted"], "properties": {"deleted": {"type": "boolean"}}}
schema.S["RestoreDeviceRequest"] = {
    "type": "object",
    "required": ["token", "device_list", "signed_at", "signature"],
    "properties": {
        "token": schema.TOKEN,
        "device_list": schema._b64(schema.MAX_BLOB_B64),
        "signed_at": schema.TIME_MS,
        "signature": schema._b64(128, "Ed25519 signature by the account key over LABEL_RESTORE_DEVICE || statement"),
    },
}

# The operations, as keyword arguments of app.Operation (app.py builds them, so this
# module does not import app.py).
OPERATION_SPECS: tuple[dict[str, Any], ...] = (
    dict(
        method="PUT",
        path="/v1/backup",
        handler="put_backup",
        summary="upload (replace) this account's backup: raw ciphertext",
        ok=200,
        response="BackupStored",
        request="BlobBytes",
        errors=(409,),
        binary_request=True,
        query=(("access_hash", ACCESS_HASH, "SHA-256 of the backup access token (required)"),),
    ),
    dict(
        method="GET",
        path="/v1/backup",
        handler="backup_status",
        summary="this account's backup: size and times",
        ok=200,
        response="BackupStored",
        errors=(404,),
    ),
    dict(
        method="DELETE",
        path="/v1/backup",
        handler="delete_backup",
        summary="delete this account's backup, row and bytes, at once",
        ok=200,
        response="BackupDeleted",
    ),
    dict(
        method="GET",
        path="/v1/restore/account",
        handler="restore_account",
        summary="the account whose backup the access token (bearer) opens",
        ok=200,
        response="Account",
        auth=False,
        errors=(401, 404, 429),
    ),
    dict(
        method="GET",
        path="/v1/restore/backup",
        handler="restore_backup",
        summary="download the backup the access token (bearer) opens",
        ok=200,
        response="BlobBytes",
        auth=False,
        errors=(401, 404, 429),
        binary_response=True,
    ),
    dict(
        method="PUT",
        path="/v1/restore/devices/{device_id}",
        handler="restore_device",
        summary="enrol a restored device: access token (bearer) and an account-key signature",
        ok=201,
        response="DeviceCreated",
        request="RestoreDeviceRequest",
        auth=False,
        errors=(401, 404, 409, 429),
        path_params=(("device_id", schema.DEVICE_ID),),
    ),
)


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


class BackupRoutes:
    """Route handlers mixed into app.Relay (which provides storage, blobs, settings...)."""

    async def put_backup(self, request: Request) -> Response:
        device = await self.authenticate(request)
        raw = request.query_params.get("access_hash")
        if raw is None:
            raise bad_request("access_hash is missing")
        access_hash = bytes.fromhex(schema.validate(ACCESS_HASH, raw, "access_hash"))
        ctype = request.headers.get("content-type", "")
        if ctype.split(";", 1)[0].strip().lower() != "application/octet-stream":
            raise RelayError("unsupported_media_type", "a backup must be application/octet-stream")
        declared = request.headers.get("content-length")
        if declared is None or not declared.isdigit() or int(declared) < 1:
            raise bad_request("a backup upload needs a Content-Length of at least 1")
        size = int(declared)  # the body cap middleware already refused one over max_backup
        blob_id = secrets.token_hex(16)
        await self.blobs.create(blob_id, size)
        stored = False
        try:
            writer = await self.blobs.open_write(blob_id, 0)
            got = 0
            try:
                async for chunk in request.stream():
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
                old = await self.storage.put_backup(device.account_id, access_hash, blob_id, size, self.now_ms())
            except StorageConflict:
                raise RelayError(
                    "backup_access_taken", "another account's backup has this access hash; make a new recovery code"
                ) from None
            stored = True
        finally:
            if not stored:
                await self.blobs.delete(blob_id)
        if old is not None and old != blob_id:
            await self.blobs.delete(old)
        info = await self.storage.get_backup(device.account_id)
        if info is None:  # deleted by another device in between
            raise _no_backup()
        return _json(_stored(info))

    async def backup_status(self, request: Request) -> Response:
        device = await self.authenticate(request)
        info = await self.storage.get_backup(device.account_id)
        if info is None:
            raise RelayError("not_found", "this account has no backup")
        return _json(_stored(info))

    async def delete_backup(self, request: Request) -> Response:
        device = await self.authenticate(request)
        # Row first (nobody can fetch it after), then the bytes.
        blob_id = await self.storage.delete_backup(device.account_id)
        if blob_id is not None:
            await self.blobs.delete(blob_id)
        return _json({"deleted": blob_id is not None})

    async def _restoring(self, request: Request) -> BackupInfo:
        """The backup the bearer access token opens; relay-wide rate-limited like
        registration (there is no credential to count against)."""
        self.register_limit.check("restore")
        info = await self.storage.backup_by_access(bearer_token_hash(request.headers.get("authorization")))
        if info is None:
            raise _no_backup()
        return info

    async def restore_account(self, request: Request) -> Response:
        info = await self._restoring(request)
        account = await self.storage.get_account(info.account_id)
        if account is None:
            raise _no_backup()
        return _json(
            {
                "account_id": account.account_id,
                "account_key": schema.b64(account.account_key),
                "device_list": schema.b64(account.device_list),
                "devices": list(account.devices),
            }
        )

    async def restore_backup(self, request: Request) -> Response:
        from imsg_relay.app import _BlobResponse

        info = await self._restoring(request)
        try:
            reader = await self.blobs.open_read(info.blob_id)
        except BlobMissing:
            raise _no_backup() from None
        return _BlobResponse(reader, info.size, None, head=request.method == "HEAD")

    async def restore_device(self, request: Request) -> Response:
        info = await self._restoring(request)
        device_id = self.path_param(request, "device_id", schema.DEVICE_ID)
        data = await self.body(request, "RestoreDeviceRequest")
        raw_token = decode_token(data["token"])
        if raw_token is None:
            raise bad_request("token must be 32 bytes, base64url without padding")
        now = self.now_ms()
        if abs(now - data["signed_at"]) > RESTORE_SIGNATURE_WINDOW_MS:
            raise RelayError(
                "unauthorized", "the enrolment signature is stale (or the clock is off by more than five minutes)"
            )
        account = await self.storage.get_account(info.account_id)
        if account is None:
            raise _no_backup()
        statement = restore_statement(account.account_id, device_id, raw_token, data["device_list"], data["signed_at"])
        try:
            Ed25519PublicKey.from_public_bytes(account.account_key[1:]).verify(
                data["signature"], LABEL_RESTORE_DEVICE + statement
            )
        except (InvalidSignature, ValueError):
            raise RelayError("unauthorized", "the enrolment is not signed by the account key") from None
        cap = self.settings.max_devices
        try:
            await self.storage.add_device(
                account.account_id, device_id, token_hash(raw_token), data["device_list"], now, max_devices=cap
            )
        except StorageConflict as exc:
            if exc.code == "too_many_devices":
                raise RelayError(
                    "too_many_devices",
                    f"this account already has {cap} devices, the most it may have; remove one first",
                    limit=cap,
                ) from None
            if exc.code == "token_taken":
                raise bad_request("token is already in use; make a fresh random one") from None
            raise RelayError("device_exists", "this account already has a device with this id") from None
        except AccountNotFound:
            raise _no_backup() from None
        return _json({"account_id": account.account_id, "device_id": device_id}, 201)


def _json(body: Any, status: int = 200) -> Response:
    return Response(dumps(body), status_code=status, media_type="application/json")
