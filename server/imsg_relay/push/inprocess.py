"""Wake-ups within one worker: waiters register on a mailbox, a stored envelope wakes them.
The Redis implementation (push/redis.py) builds on it: a subscriber task calls `wake`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from imsg_relay.push.base import Mailbox


class InProcessPush:
    def __init__(self) -> None:
        self._waiters: dict[Mailbox, set[asyncio.Event]] = {}

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        # Wake everyone so long polls end promptly at shutdown.
        for events in self._waiters.values():
            for event in events:
                event.set()

    @contextmanager
    def waiter(self, mailbox: Mailbox) -> Iterator[asyncio.Event]:
        """An event set when an envelope for `mailbox` is stored. Register before reading
        the mailbox, so an envelope stored between the read and the wait is not missed."""
        event = asyncio.Event()
        self._waiters.setdefault(mailbox, set()).add(event)
        try:
            yield event
        finally:
            events = self._waiters.get(mailbox)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._waiters[mailbox]

    def wake(self, mailboxes: Iterable[Mailbox]) -> None:
        for mailbox in mailboxes:
            for event in self._waiters.get(mailbox, ()):
                event.set()

    async def notify(self, mailboxes: Iterable[Mailbox]) -> None:
        self.wake(mailboxes)

    @property
    def waiting(self) -> int:
        return sum(len(v) for v in self._waiters.values())
