"""Device linking through provisioning channels.

Only the account's side authenticates: the new device has no credential yet, and holding
the channel id (shown to it as a pairing code) is its capability. The relay sees opaque
bytes in two boxes, each message read once; a channel lives 10 minutes.
"""

from __future__ import annotations

import hashlib
import secrets

from starlette.responses import Response

from imsg_relay.context import RelayContext
from imsg_relay.errors import RelayError
from imsg_relay.operation import Call, json_response
from imsg_relay.push import Mailbox
from imsg_relay.routes.messages import long_poll
from imsg_relay.schema import BOXES, ChannelRequest, ProvisioningPut
from imsg_relay.settings import MAX_OPEN_CHANNELS, MAX_PROVISIONING_MESSAGE, MAX_PROVISIONING_QUEUED
from imsg_relay.storage.base import ChannelNotFound, StorageConflict

LABEL_PROVISIONING_WAKEUP = b"imsg/v1/provisioning-wakeup"


def _no_channel() -> RelayError:
    return RelayError("not_found", "no such provisioning channel, or it has expired")


def box_wakeup(channel: str, box: str) -> Mailbox:
    """The push key of a provisioning box. A digest of the channel id, not the id itself,
    so the capability never travels over pub/sub; the "p" prefix keeps it apart from the
    32-hex account ids of device mailboxes."""
    digest = hashlib.sha256(LABEL_PROVISIONING_WAKEUP + channel.encode()).hexdigest()
    return "p" + digest[:31], 0 if box == "new" else 1


async def open_channel(relay: RelayContext, call: Call) -> Response:
    device = await relay.authenticate(call.request)
    await call.body(ChannelRequest)
    now = relay.now_ms()
    expires_at = now + relay.settings.provisioning_ttl_ms
    while True:  # 64 random bits: a collision is retried, never expected
        channel = secrets.token_hex(8)
        try:
            await relay.storage.create_channel(channel, device.account_id, now, expires_at, MAX_OPEN_CHANNELS)
        except StorageConflict as exc:
            if exc.code == "channel_exists":
                continue
            raise RelayError(
                "too_many_channels",
                f"this account already has {MAX_OPEN_CHANNELS} open provisioning channels;"
                " close one or wait for it to expire",
                limit=MAX_OPEN_CHANNELS,
            ) from None
        return json_response({"channel": channel, "expires_at": expires_at}, 201)


def _target(relay: RelayContext, call: Call) -> tuple[str, str]:
    # Rate limits before any storage access, keyed by the channel id, never by address.
    relay.limits.provisioning_global.check("provisioning")
    channel = call.path("channel")
    box = call.path("box")
    relay.limits.provisioning.check(channel)
    return channel, box


async def put_provisioning(relay: RelayContext, call: Call) -> Response:
    channel, box = _target(relay, call)
    data = await call.body(ProvisioningPut)
    if len(data.body) > MAX_PROVISIONING_MESSAGE:
        raise RelayError(
            "payload_too_large",
            f"provisioning message is over {MAX_PROVISIONING_MESSAGE} bytes",
            limit=MAX_PROVISIONING_MESSAGE,
        )
    try:
        queued = await relay.storage.put_provisioning(channel, box, data.body, relay.now_ms(), MAX_PROVISIONING_QUEUED)
    except ChannelNotFound:
        raise _no_channel() from None
    except StorageConflict:  # box_full
        raise RelayError(
            "box_full",
            f"{MAX_PROVISIONING_QUEUED} messages already wait in this box; retry once the other device has read them",
            headers={"Retry-After": "1"},
            retry_after=1,
            limit=MAX_PROVISIONING_QUEUED,
        ) from None
    await relay.push.notify([box_wakeup(channel, box)])
    return json_response({"queued": queued})


async def take_provisioning(relay: RelayContext, call: Call) -> Response:
    channel, box = _target(relay, call)
    wait = min(call.query("wait"), relay.settings.max_wait)

    async def take() -> bytes | None:
        try:
            return await relay.storage.take_provisioning(channel, box, relay.now_ms())
        except ChannelNotFound:
            raise _no_channel() from None

    body = await long_poll(relay, box_wakeup(channel, box), wait, take, lambda b: b is None)
    return json_response({"body": body})


async def close_channel(relay: RelayContext, call: Call) -> Response:
    device = await relay.authenticate(call.request)
    channel = call.path("channel")
    try:
        await relay.storage.close_channel(channel, device.account_id, relay.now_ms())
    except ChannelNotFound:
        raise _no_channel() from None
    finally:
        # Waiting readers re-read at once: they answer 404 instead of waiting out the poll.
        await relay.push.notify([box_wakeup(channel, b) for b in BOXES])
    return json_response({"channel": channel})
