"""Profile ciphertexts (name and photo, docs/RELAY-API.md "Profiles"): the relay keeps one
opaque blob per account, filed under a 32-byte key id that only holders of the account's
profile key can compute, and replaces it on every upload.

The relay cannot read a profile; what it checks is the blob's frame, so it cannot be used
to park arbitrary data: a format byte, the same key id as the path, a revision that does
not go backwards (a device that missed an update cannot overwrite a newer profile), and a
length inside the format's bounds. Reads need no credential (the key id is the capability),
so the relay does not learn who reads whose profile; they are rate-limited per account read
and relay-wide, in memory, never by address. Nothing here logs an id, a size or a byte.
"""

from __future__ import annotations

import hmac
import struct
from typing import Annotated

from msgspec import Meta, Struct
from starlette.responses import Response

from imsg_relay import schema
from imsg_relay.context import RelayContext
from imsg_relay.errors import RelayError, bad_request
from imsg_relay.operation import Call, json_response, media_type

# The frame of a profile blob (docs/PROTOCOL.md §6c): version, key id, revision, nonce,
# then AES-256-GCM over a 260-byte name block and a photo padded to 0 or 4 KiB..512 KiB.
PROFILE_FORMAT = 1
PROFILE_MIN = 1 + 32 + 8 + 12 + 256 + 4 + 16
PROFILE_MAX = PROFILE_MIN + 512 * 1024
ProfileKeyId = Annotated[
    str, schema.pattern("^[0-9a-f]{64}$", "64 lowercase hex characters: HKDF of the profile key (PROTOCOL.md §6c)")
]
PROFILE_PARAMS = (("key_id", ProfileKeyId),)
PROFILE_READ_PARAMS = (("account_id", schema.AccountId), ("key_id", ProfileKeyId))


class ProfileStored(Struct):
    revision: Annotated[int, Meta(ge=0)]
    size: Annotated[int, Meta(ge=1)]


def _no_profile() -> RelayError:
    return RelayError("not_found", "no profile for this account under this key id")


async def put_profile(relay: RelayContext, call: Call) -> Response:
    device = await relay.authenticate(call.request)
    key_id = bytes.fromhex(call.path("key_id"))
    if media_type(call.request) != "application/octet-stream":
        raise RelayError("unsupported_media_type", "a profile must be application/octet-stream")
    body = await call.request.body()
    if len(body) > PROFILE_MAX:
        raise RelayError("payload_too_large", f"a profile is at most {PROFILE_MAX} bytes", limit=PROFILE_MAX)
    if len(body) < PROFILE_MIN or body[0] != PROFILE_FORMAT:
        raise bad_request("not a profile blob (format version or length)")
    if body[1:33] != key_id:
        raise bad_request("the blob's key id is not the one in the path")
    (revision,) = struct.unpack(">Q", body[33:41])
    if revision >= 1 << 63:
        raise bad_request("revision out of range")
    stored = await relay.storage.put_profile(device.account_id, key_id, revision, body, relay.now_ms())
    if not stored:
        raise RelayError("stale_revision", "the relay holds a newer revision of this profile")
    return json_response({"revision": revision, "size": len(body)})


async def get_profile(relay: RelayContext, call: Call) -> Response:
    relay.limits.profile_global.check("profile")
    account_id = call.path("account_id")
    key_id = bytes.fromhex(call.path("key_id"))
    relay.limits.profile.check(account_id)
    row = await relay.storage.get_profile(account_id)
    if row is None or not hmac.compare_digest(row[0], key_id):
        raise _no_profile()
    return Response(row[1], media_type="application/octet-stream")
