"""Accounts and devices: register, read an account, add and remove devices.

A registration proves nothing but that the caller holds the account key's public half:
the account id must be derived from it, so nobody can squat an id whose key they lack.
The first handle is claimed in the same step (its blinded row: routes/reachable.py).
"""

from __future__ import annotations

import hashlib

from starlette.responses import Response

from imsg_relay.auth import decode_token, token_hash
from imsg_relay.context import RelayContext
from imsg_relay.errors import RelayError, bad_request
from imsg_relay.operation import Call, json_response
from imsg_relay.routes import reachable
from imsg_relay.schema import AddDeviceRequest, RegisterRequest, RemoveDeviceRequest, UnsetType
from imsg_relay.storage.base import Account, AccountNotFound, StorageConflict

API_VERSION = "1"
ACCOUNT_ID_LABEL = b"imsg/v1/account-id"
ACCOUNT_KEY_TAG = 0x06  # type tag of an Ed25519 account public key
ACCOUNT_KEY_BYTES = 33

_CONFLICTS = {
    "account_exists": "an account with this account_id exists",
    "handle_taken": "another account holds this handle",
    "device_exists": "this account already has a device with this id",
}


def derive_account_id(account_key: bytes) -> str:
    return hashlib.sha256(ACCOUNT_ID_LABEL + account_key).digest()[:16].hex()


def conflict(exc: StorageConflict) -> RelayError:
    """The answer to a storage conflict of a registration or a new device."""
    if exc.code == "token_taken":
        return bad_request("token is already in use; make a fresh random one")
    return RelayError(exc.code, _CONFLICTS[exc.code])


def too_many_devices(cap: int) -> RelayError:
    return RelayError(
        "too_many_devices", f"this account already has {cap} devices, the most it may have; remove one first", limit=cap
    )


def new_token_hash(token: str) -> bytes:
    """SHA-256 of a new device's token (the relay keeps nothing else of it); 400 if malformed."""
    raw = decode_token(token)
    if raw is None:
        raise bad_request("token must be 32 bytes, base64url without padding")
    return token_hash(raw)


def account_json(account: Account) -> dict[str, object]:
    return {
        "account_id": account.account_id,
        "account_key": account.account_key,
        "device_list": account.device_list,
        "devices": list(account.devices),
    }


async def health(relay: RelayContext, call: Call) -> Response:
    return json_response({"status": "ok", "version": API_VERSION})


async def register(relay: RelayContext, call: Call) -> Response:
    relay.limits.register.check("register")
    data = await call.body(RegisterRequest)
    key = data.account_key
    if len(key) != ACCOUNT_KEY_BYTES or key[0] != ACCOUNT_KEY_TAG:
        raise bad_request("account_key must be 33 bytes: 0x06 then an ed25519 public key")
    if derive_account_id(key) != data.account_id:
        raise bad_request("account_id is not derived from account_key")
    digest = new_token_hash(data.token)
    handle, code = await reachable.new_handle_row(relay, data.account_id, data.handle, data.label)
    try:
        await relay.storage.create_account(
            data.account_id, key, handle, data.device_list, data.device_id, digest, relay.now_ms()
        )
    except StorageConflict as exc:
        raise conflict(exc) from None
    created: dict[str, object] = {
        "account_id": data.account_id,
        "device_id": data.device_id,
        "handle_state": handle.state,
    }
    if code is not None:  # registered either way; `POST /v1/handles` sends a new code
        try:
            await reachable.send_code(relay, data.handle, code)
            created["code_sent"] = True
        except RelayError:
            created["code_sent"] = False
    return json_response(created, 201)


async def get_account(relay: RelayContext, call: Call) -> Response:
    """Public data (the account key and its signed device list; clients check both), so
    no credential: a credential here would tell the relay who looks up whom. Counted per
    target account and relay-wide, in memory, never by address."""
    account_id = call.path("account_id")
    relay.limits.account_read_global.check("account")
    relay.limits.account_read.check(account_id)
    account = await relay.storage.get_account(account_id)
    if account is None:
        raise RelayError("not_found", "no such account")
    return json_response(account_json(account))


async def add_device(relay: RelayContext, call: Call) -> Response:
    device = await relay.authenticate(call.request)
    device_id = call.path("device_id")
    data = await call.body(AddDeviceRequest)
    digest = new_token_hash(data.token)
    cap = relay.settings.max_devices
    try:
        await relay.storage.add_device(
            device.account_id, device_id, digest, data.device_list, relay.now_ms(), max_devices=cap
        )
    except StorageConflict as exc:
        if exc.code == "too_many_devices":
            raise too_many_devices(cap) from None
        raise conflict(exc) from None
    except AccountNotFound:  # the caller's account went away under it
        raise RelayError("unauthorized", "unknown token") from None
    return json_response({"account_id": device.account_id, "device_id": device_id}, 201)


async def remove_device(relay: RelayContext, call: Call) -> Response:
    device = await relay.authenticate(call.request)
    device_id = call.path("device_id")
    data = await call.body(RemoveDeviceRequest)
    device_list = None if isinstance(data.device_list, UnsetType) else data.device_list
    try:
        await relay.storage.remove_device(device.account_id, device_id, device_list)
    except AccountNotFound:
        raise RelayError("not_found", "no such device on this account") from None
    return json_response({"account_id": device.account_id, "device_id": device_id})
