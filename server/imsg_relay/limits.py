"""Request body cap, enforced before the body is read: on Content-Length when the client
declares one, and byte by byte while a chunked body streams in.

The 413 keeps the connection open: the server protocol (imsg_relay/httpserver.py) drains
a bounded amount of the unread body before closing, so the client reads the 413 instead
of a connection reset."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imsg_relay.errors import RelayError
from imsg_relay.settings import MIB

# After an early 413, the server reads and discards at most this much more of the body,
# for at most this long (imsg_relay/httpserver.py), so the client can read the answer.
DRAIN_BYTES = 8 * MIB
DRAIN_SECONDS = 10.0


def _too_large(limit: int, *, close: bool = False) -> RelayError:
    # `close`: more may follow than the server will drain, so the client must not reuse
    # the connection (it gets a lingering close instead).
    return RelayError(
        "payload_too_large",
        f"request body is over the {limit} byte limit",
        headers={"Connection": "close"} if close else None,
        limit=limit,
    )


class BodyLimitMiddleware:
    """`overrides`: (method, path prefix, cap) for routes whose cap is not `max_body`."""

    def __init__(self, app: ASGIApp, max_body: int, overrides: tuple[tuple[str, str, int], ...] = ()) -> None:
        self.app = app
        self.max_body = max_body
        self.overrides = overrides

    def limit_for(self, scope: Scope) -> int:
        method, path = scope.get("method"), scope.get("path", "")
        for m, prefix, cap in self.overrides:
            if method == m and path.startswith(prefix):
                return cap
        return self.max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_error(send, RelayError("bad_request", "content-length is not a number"))
                    return
                if declared > limit:
                    # Answer without handing a byte of it to the app; the server
                    # protocol discards (a bounded amount of) what follows.
                    await _send_error(send, _too_large(limit, close=declared > DRAIN_BYTES))
                    return
                break
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # Raised inside the route's body read, so the route's error handling
                    # answers 413 and nothing past the cap is kept.
                    raise _too_large(limit, close=True)
            return message

        await self.app(scope, counting_receive, send)


async def _send_error(send: Send, error: RelayError) -> None:
    # No "Connection: close": closing with the body unread would reset the connection
    # and lose this answer (see imsg_relay/httpserver.py).
    response = error.response()

    async def no_receive() -> Message:  # the response never reads the request
        return {"type": "http.disconnect"}

    await response({"type": "http"}, no_receive, send)
