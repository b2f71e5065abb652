"""One error type for everything the relay refuses, rendered as JSON with a stable code."""

from __future__ import annotations

import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imsg_relay.jsonio import dumps

log = logging.getLogger("imsg_relay")

# status for each stable code (docs/RELAY-API.md, "Errors")
STATUS = {
    "bad_request": 400,
    "unauthorized": 401,
    "access_denied": 401,  # a sealed send without the recipient's access key
    "wrong_code": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "account_exists": 409,
    "handle_taken": 409,
    "device_exists": 409,
    "device_mismatch": 409,
    "too_many_devices": 409,
    "too_many_channels": 409,
    "blob_complete": 409,
    "incomplete": 409,
    "too_many_handles": 409,
    "no_code": 409,
    "prefix_bits_changed": 409,
    "backup_access_taken": 409,
    "stale_revision": 409,
    "payload_too_large": 413,
    "quota_exceeded": 413,
    "unsupported_media_type": 415,
    "range_not_satisfiable": 416,
    "rate_limited": 429,
    "box_full": 429,
    "internal": 500,
    "verifier_failed": 502,
    "unavailable": 503,
}


class RelayError(Exception):
    """the relay refused a request: {code} ({message})"""

    def __init__(self, code: str, message: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.status = STATUS[code]
        self.message = message
        self.headers = headers or {}
        self.extra = extra

    def response(self) -> Response:
        body = {"error": self.code, "message": self.message, **self.extra}
        headers = dict(self.headers)
        if self.code == "unauthorized":
            headers.setdefault("WWW-Authenticate", "Bearer")
        return Response(dumps(body), status_code=self.status, headers=headers, media_type="application/json")


class StorageUnavailable(Exception):
    """storage is temporarily unavailable"""


def bad_request(message: str, **extra: Any) -> RelayError:
    return RelayError("bad_request", message, **extra)


async def relay_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RelayError)
    return exc.response()


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    # Starlette's router raises these for unknown routes and wrong methods.
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return RelayError("not_found", "no such route").response()
    if exc.status_code == 405:
        err = RelayError("method_not_allowed", "method not allowed for this route")
        resp = err.response()
        if exc.headers and "Allow" in exc.headers:
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp
    return RelayError("bad_request", "request refused").response()


async def storage_unavailable_handler(request: Request, exc: Exception) -> Response:
    log.warning("storage unavailable: %s", type(exc).__name__)
    return RelayError("unavailable", "storage temporarily unavailable, retry", headers={"Retry-After": "1"}).response()


class CatchAllMiddleware:
    """The last line of defence: any exception a route did not turn into a RelayError
    becomes `500 {"error": "internal"}`. It logs the exception's type and the route
    template, and never the request, which may hold tokens or bodies. It does not
    re-raise, so the server does not log a second traceback of its own."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except ClientDisconnect:
            return  # the client left mid-request: nothing broke, and nobody to answer
        except Exception as exc:
            route = getattr(scope.get("route"), "path", "?")
            log.error("internal error on %s %s: %s", scope.get("method"), route, type(exc).__name__, exc_info=exc)
            if not started:
                body = dumps({"error": "internal", "message": "internal error"})
                await send(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
