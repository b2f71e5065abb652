"""Prekeys: a device publishes its signed and one-time prekeys; others take bundles, one
per device, and each one-time key is served once (deleted in the same transaction)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.responses import Response

from imsg_relay import schema
from imsg_relay.context import RelayContext
from imsg_relay.errors import RelayError
from imsg_relay.operation import Call, json_response
from imsg_relay.routes import sealed
from imsg_relay.schema import UnsetType
from imsg_relay.storage.base import AccountNotFound, Bundle, KeyCounts, OneTimeKey, SignedKey


def _signed(d: schema.SignedPrekey | UnsetType) -> SignedKey | None:
    return None if isinstance(d, UnsetType) else SignedKey(d.key_id, d.public_key, d.signature)


def _unique_keys(items: Sequence[schema.OneTimePrekey | schema.SignedPrekey]) -> list[OneTimeKey]:
    # A key_id given twice in one list: the last one wins, as it would across requests.
    keys = {k.key_id: OneTimeKey(k.key_id, k.public_key, getattr(k, "signature", None)) for k in items}
    return list(keys.values())


def _counts_json(counts: KeyCounts) -> dict[str, int]:
    return {"one_time": counts.one_time, "kem_one_time": counts.kem_one_time}


def bundle_json(b: Bundle) -> dict[str, Any]:
    sp = b.signed_prekey
    kem = None
    if b.kem_prekey is not None:
        kem = {
            "key_id": b.kem_prekey.key_id,
            "public_key": (b.kem_prekey.public_key),
            "signature": (b.kem_prekey.signature),
            "last_resort": b.kem_last_resort,
        }
    one_time = None
    if b.one_time is not None:
        one_time = {"key_id": b.one_time.key_id, "public_key": (b.one_time.public_key)}
    return {
        "device_id": b.device_id,
        "signed_prekey": {
            "key_id": sp.key_id,
            "public_key": (sp.public_key),
            "signature": (sp.signature),
        },
        "one_time": one_time,
        "kem_prekey": kem,
    }


async def put_keys(relay: RelayContext, call: Call) -> Response:
    device = await relay.authenticate(call.request)
    data = await call.body(schema.KeysRequest)
    counts = await relay.storage.put_keys(
        device,
        _signed(data.signed_prekey),
        _signed(data.kem_last_resort),
        _unique_keys(data.one_time),
        _unique_keys(data.kem_one_time),
    )
    return json_response(_counts_json(counts))


async def key_counts(relay: RelayContext, call: Call) -> Response:
    device = await relay.authenticate(call.request)
    return json_response(_counts_json(await relay.storage.key_counts(device)))


async def get_bundles(relay: RelayContext, call: Call) -> Response:
    """Bundles, authorized either by the account's unidentified-access key (no credential:
    the way clients fetch, so no credential names whom they write to; counted per target
    account, one 401 for every failure) or by a bearer token (the identified fallback to a
    recipient whose access key the sender does not hold; counted per device as before)."""
    account_id = call.path("account_id")
    if call.request.headers.get("authorization") is not None:
        device = await relay.authenticate(call.request)
        relay.limits.lookup.check(device)
    else:
        if not await sealed.access_allowed(relay, call.request, account_id):
            relay.limits.sealed_refused.check(account_id)  # a guessing flood gets 429
            raise sealed.access_denied()
        relay.limits.bundle.check(account_id)
    device_id = call.query("device_id")
    try:
        bundles = await relay.storage.take_bundles(account_id, device_id)
    except AccountNotFound:
        raise RelayError("not_found", "no such account or device") from None
    return json_response({"account_id": account_id, "devices": [bundle_json(b) for b in bundles]})
