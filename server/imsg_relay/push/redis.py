"""Wake-ups across relay workers through Redis pub/sub.

Each worker keeps its own waiters (as `InProcessPush` does) and subscribes to one channel;
a stored envelope is published as "account_id:device_id", and every worker wakes its local
waiters for that mailbox. Only mailbox ids travel: no bodies, no senders. A lost publish
costs latency, not messages: a waiting fetch still ends at its deadline and re-reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

import redis.asyncio as aioredis

from imsg_relay.push.base import Mailbox
from imsg_relay.push.inprocess import InProcessPush

log = logging.getLogger("imsg_relay.push")

CHANNEL = "imsg-relay:v1:mailbox"


class RedisPush(InProcessPush):
    def __init__(self, url: str = "redis://127.0.0.1:6379/0", channel: str = CHANNEL) -> None:
        super().__init__()
        self.url = url
        self.channel = channel
        self._redis: aioredis.Redis | None = None
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self) -> None:
        self._redis = aioredis.Redis.from_url(self.url)
        self._task = asyncio.create_task(self._listen())
        await asyncio.wait_for(self._subscribed.wait(), 5)

    async def stop(self) -> None:
        await super().stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._redis is not None:
            await self._redis.aclose()

    async def ping(self) -> None:
        assert self._redis is not None
        await self._redis.ping()

    async def notify(self, mailboxes: Iterable[Mailbox]) -> None:
        assert self._redis is not None
        boxes = list(mailboxes)
        try:
            for account_id, device_id in boxes:
                await self._redis.publish(self.channel, f"{account_id}:{device_id}")
        except Exception as exc:  # wake locals at least; remote waiters hit their deadline
            log.warning("redis publish failed: %s", type(exc).__name__)
            self.wake(boxes)

    async def _listen(self) -> None:
        assert self._redis is not None
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    self._subscribed.set()
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        account_id, _, device = message["data"].decode().partition(":")
                        if device.isdigit():
                            self.wake([(account_id, int(device))])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("redis subscription lost (%s); retrying", type(exc).__name__)
                await asyncio.sleep(1)
