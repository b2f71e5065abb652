"""The push interface: wake-ups for long polls (fetches and provisioning boxes).

`notify` publishes that a mailbox got something; `waiter` gives a long poll an event to
wait on. Implementations: in-process (one worker, push/inprocess.py) and Redis pub/sub
(many workers, push/redis.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Protocol

Mailbox = tuple[str, int]  # (account_id, device_id)


class Push(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    @contextmanager
    def waiter(self, mailbox: Mailbox) -> Iterator[asyncio.Event]: ...
    async def notify(self, mailboxes: Iterable[Mailbox]) -> None: ...
