"""uvicorn's httptools protocol, with a bounded drain of request bodies answered early.

The relay answers some requests before it has read their body (a 413 on Content-Length,
or once a streamed body passes its cap). If the connection were then closed while body
bytes sit unread in the kernel's receive buffer, the kernel sends a reset instead of a
clean close and may drop the answer still in flight: the client sees "connection reset"
and wrongly concludes the relay is unreachable. So an early answer never closes the
connection itself (the 413 carries no `Connection: close`), and this protocol reads and
discards what is left of that body (uvicorn already discards body bytes that arrive after
the response) up to DRAIN_BYTES or for DRAIN_SECONDS, whichever comes first; only then
does it close. A client sending a body within those bounds finishes and reads its 413 on a
connection it may reuse. A larger (or undeclared, chunked) body gets `Connection: close`
and a lingering close: the answer, our FIN, the same bounded drain, then the close; by
then the 413 has long been in the client's receive buffer.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from imsg_relay.limits import DRAIN_BYTES, DRAIN_SECONDS


class _LingeringTransport:
    """The connection's transport as uvicorn's request cycle sees it: `close()` while a
    request body is still arriving becomes a lingering close (the answer, then our FIN,
    then the rest of the body read and discarded within bounds, then the real close).
    Everything else goes straight to the real transport."""

    def __init__(self, transport: asyncio.Transport, protocol: DrainingHttpToolsProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._lingering = False

    def close(self) -> None:
        cycle = self._protocol.cycle
        body_unread = cycle is not None and cycle.more_body and not cycle.disconnected
        if self._lingering or not body_unread or self._transport.is_closing():
            self._transport.close()
            return
        self._lingering = True
        if self._transport.can_write_eof():
            self._transport.write_eof()  # the client sees the answer end, then EOF
        self._protocol.start_drain()
        self._transport.resume_reading()

    def is_closing(self) -> bool:
        return self._lingering or self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class DrainingHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._drained = 0
        self._drain_timer: asyncio.TimerHandle | None = None
        self._real_transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._real_transport = transport
        self.transport = _LingeringTransport(transport, self)  # type: ignore[assignment]

    def start_drain(self) -> None:
        if self._drain_timer is None:
            self._drain_timer = self.loop.call_later(DRAIN_SECONDS, self._stop_draining)

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if cycle is not None and cycle.response_complete:
            # The answer is out: this is the rest of a body nobody will read.
            self._drained += len(body)
            self.start_drain()
            if self._drained > DRAIN_BYTES:
                self._stop_draining()
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if cycle is not None and cycle.response_complete and self._drained:
            # The early-answered body ended within bounds. A lingering close closes now;
            # a kept-alive connection is usable for the next request.
            self._end_drain()
            if self.transport.is_closing():
                self._close_now()
            return
        super().on_message_complete()

    def _end_drain(self) -> None:
        self._drained = 0
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None

    def _stop_draining(self) -> None:
        self._end_drain()
        self._close_now()

    def _close_now(self) -> None:
        if self._real_transport is not None and not self._real_transport.is_closing():
            self._real_transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_drain()
        if self._real_transport is not None:  # gone: nothing left to linger on
            self.transport = self._real_transport
        super().connection_lost(exc)
