"""Mailboxes: store an envelope for every device of an account, fetch (long poll) and ack.

Delivery is at-least-once on client-chosen message ids: a send is idempotent on
(account, device, message_id), and an acked envelope is deleted at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from starlette.responses import Response

from imsg_relay.context import RelayContext
from imsg_relay.errors import RelayError, bad_request
from imsg_relay.jsonio import dumps
from imsg_relay.operation import Call, json_response
from imsg_relay.push import Mailbox
from imsg_relay.schema import AckRequest, SendRequest
from imsg_relay.settings import MAX_FETCH_BYTES
from imsg_relay.storage.base import AccountNotFound, DeviceMismatch, Envelope


def envelope_bodies(relay: RelayContext, data: SendRequest) -> dict[int, bytes]:
    """device id -> envelope of a send (authenticated or sealed): each device once, each
    envelope within the relay's limit."""
    limit = relay.settings.max_envelope
    bodies: dict[int, bytes] = {}
    for m in data.messages:
        if m.device_id in bodies:
            raise bad_request(f"device {m.device_id} is addressed twice")
        if len(m.body) > limit:
            raise RelayError(
                "payload_too_large", f"envelope for device {m.device_id} is over {limit} bytes", limit=limit
            )
        bodies[m.device_id] = m.body
    return bodies


async def store(
    relay: RelayContext, account_id: str, message_id: str, bodies: dict[int, bytes], exclude: int | None
) -> int:
    """Store the envelopes and wake the mailboxes' waiters. Raises AccountNotFound and
    turns a device mismatch into its 409."""
    try:
        stored = await relay.storage.store_envelopes(account_id, message_id, bodies, exclude, relay.now_ms())
    except DeviceMismatch as exc:
        raise RelayError("device_mismatch", "device list changed", missing=exc.missing, extra=exc.extra) from None
    if bodies:
        await relay.push.notify([(account_id, d) for d in bodies])
    return stored


async def send(relay: RelayContext, call: Call) -> Response:
    device = await relay.authenticate(call.request)
    relay.limits.send.check(device)
    account_id = call.path("account_id")
    data = await call.body(SendRequest)
    bodies = envelope_bodies(relay, data)
    exclude = device.device_id if account_id == device.account_id else None
    try:
        stored = await store(relay, account_id, data.message_id, bodies, exclude)
    except AccountNotFound:
        raise RelayError("not_found", "no such account") from None
    return json_response({"message_id": data.message_id, "stored": stored})


T = TypeVar("T")


async def long_poll(
    relay: RelayContext, key: Mailbox, wait: int, read: Callable[[], Awaitable[T]], empty: Callable[[T], bool]
) -> T:
    """`read()` now and, while it comes back `empty` and `wait` seconds have not passed,
    again each time `key` is woken. It registers as a waiter before the second read, so a
    write between the two reads still wakes it."""
    result = await read()
    if not empty(result) or wait <= 0:
        return result
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    with relay.push.waiter(key) as event:
        while True:
            result = await read()
            remaining = deadline - loop.time()
            if not empty(result) or remaining <= 0:
                return result
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                pass
            event.clear()


async def fetch(relay: RelayContext, call: Call) -> Response:
    device = await relay.authenticate(call.request)
    wait = min(call.query("wait"), relay.settings.max_wait)
    limit = call.query("limit")

    async def read() -> tuple[list[Envelope], bool]:
        not_before = relay.now_ms() - relay.settings.retention_ms
        return await relay.storage.fetch(device, limit, not_before, MAX_FETCH_BYTES)

    messages, more = await long_poll(relay, (device.account_id, device.device_id), wait, read, lambda r: not r[0])
    return Response(encode_messages(messages, more), media_type="application/json")


def encode_messages(messages: list[Envelope], more: bool) -> bytes:
    """The JSON body of a fetch answer."""
    return dumps(
        {
            "messages": [{"message_id": m.message_id, "body": m.body, "received_at": m.received_at} for m in messages],
            "more": more,
        }
    )


async def ack(relay: RelayContext, call: Call) -> Response:
    device = await relay.authenticate(call.request)
    data = await call.body(AckRequest)
    return json_response({"acked": await relay.storage.ack(device, data.message_ids)})
