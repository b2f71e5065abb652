"""The relay's ASGI application: `create_app(settings, storage)`, and routing.

Plain Starlette routes built from OPERATIONS (imsg_relay/routes/), the one table that
also drives request validation and /openapi.json. No module-level state: everything a
request needs hangs off the `RelayContext` the factory builds (imsg_relay/context.py), so
tests can run as many relays side by side as they like. The route functions themselves
live in imsg_relay/routes/, grouped by resource.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from imsg_relay.blobs.base import BlobStore
from imsg_relay.context import RelayContext
from imsg_relay.errors import (
    CatchAllMiddleware,
    RelayError,
    StorageUnavailable,
    http_exception_handler,
    relay_error_handler,
    storage_unavailable_handler,
)
from imsg_relay.health import healthz, readyz
from imsg_relay.keyset import KeyMismatch, check_fingerprint
from imsg_relay.limits import BodyLimitMiddleware
from imsg_relay.metrics import MetricsMiddleware, RelayMetrics
from imsg_relay.operation import Call, Operation
from imsg_relay.push import Push
from imsg_relay.routes import OPERATIONS
from imsg_relay.settings import MAX_PROVISIONING_REQUEST, Settings
from imsg_relay.storage.base import Storage
from imsg_relay.sweeper import run_sweeper

__all__ = ["OPERATIONS", "create_app"]

log = logging.getLogger("imsg_relay")

Endpoint = Callable[[Request], Awaitable[Response]]


def _routes(relay: RelayContext) -> list[Route]:
    """One route per path, dispatching on the method, so a 405 lists in `Allow` every method
    the path has. Static paths come first: /v1/keys/count before /v1/keys/{account_id}."""
    by_path: dict[str, dict[str, Operation]] = {}
    for op in sorted(OPERATIONS, key=lambda o: "{" in o.path):
        by_path.setdefault(op.path, {})[op.method] = op
    static = {path: methods for path, methods in by_path.items() if "{" not in path}
    routes = []
    for path, ops in by_path.items():
        # Static paths this parametrised one would also match (PUT /v1/messages/ack would
        # reach the send route as account_id "ack"): they answer 405 with their own Allow.
        pattern = re.compile("^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(path)) + "$")
        shadowed = {p: ", ".join(sorted(m)) for p, m in static.items() if p != path and pattern.match(p)}
        routes.append(Route(path, _dispatch(relay, ops, shadowed), methods=list(ops)))
    return routes


def _dispatch(relay: RelayContext, ops: dict[str, Operation], shadowed: dict[str, str]) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        allow = shadowed.get(request.url.path)
        if allow is not None:
            raise HTTPException(405, headers={"Allow": allow})
        op = ops["GET" if request.method == "HEAD" else request.method]
        return await op.handler(relay, Call(request, op))

    return endpoint


def create_app(
    settings: Settings,
    storage: Storage | None = None,
    *,
    push: Push | None = None,
    clock: Callable[[], float] = time.time,
    blobs: BlobStore | None = None,
) -> Starlette:
    """The relay as an ASGI app. It opens `storage` (SQLite in `settings.data_dir` when none
    is given, PostgreSQL when `settings.database_url` is set) at startup and closes it at
    shutdown. Blobs live in `blobs` (files under `settings.data_dir / "blobs"` when none is
    given); wake-ups go through `push` (Redis when `settings.redis_url` is set)."""
    from imsg_relay.backends import build_blobs, build_push, build_storage
    from imsg_relay.openapi import build_openapi

    if storage is None:
        storage = build_storage(settings)
    if push is None:
        push = build_push(settings)
    if blobs is None:
        blobs = build_blobs(settings)
    relay = RelayContext(settings, storage, push, blobs, clock)
    metrics = RelayMetrics()
    metrics.add_gauges(lambda: _gauges(relay))
    relay.openapi_body = json.dumps(build_openapi(OPERATIONS, settings)).encode()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        relay.load_keys()
        await relay.storage.open()
        try:
            check_fingerprint(await relay.storage.key_fingerprint(relay.key_fingerprint), relay.key_fingerprint)
        except KeyMismatch as exc:
            log.error("%s", exc)  # the operator's message, before uvicorn's traceback
            await relay.storage.close()
            raise
        await relay.push.start()
        sweeper = asyncio.create_task(
            run_sweeper(
                relay.storage,
                settings.retention_ms,
                settings.sweep_interval,
                clock,
                relay.blobs,
                settings.blob_retention_ms,
                metrics,
            )
        )
        try:
            yield {"relay": relay}
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await relay.push.stop()
            await relay.storage.close()

    async def openapi(request: Request) -> Response:
        return Response(relay.openapi_body, media_type="application/json")

    async def metrics_endpoint(request: Request) -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    routes = [
        Route("/openapi.json", openapi, methods=["GET"], include_in_schema=False),
        # Operations endpoints (imsg_relay/health.py, imsg_relay/metrics.py), outside the API.
        Route("/healthz", healthz, methods=["GET"], include_in_schema=False),
        Route("/readyz", readyz(relay), methods=["GET"], include_in_schema=False),
        Route("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False),
    ]
    routes += _routes(relay)
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(MetricsMiddleware, metrics=metrics),
            Middleware(CatchAllMiddleware),
            Middleware(
                BodyLimitMiddleware,
                max_body=settings.max_body,
                overrides=(
                    ("PUT", "/v1/provisioning/", MAX_PROVISIONING_REQUEST),
                    # blob parts stream to disk: capped at a part
                    ("PUT", "/v1/blobs/", settings.blob_part_size),
                    # a backup streams to the blob store
                    ("PUT", "/v1/backup", settings.max_backup),
                ),
            ),
        ],
        exception_handlers={
            RelayError: relay_error_handler,
            HTTPException: http_exception_handler,
            StorageUnavailable: storage_unavailable_handler,
        },
        lifespan=lifespan,
    )
    app.state.relay = relay
    app.state.metrics = metrics
    return app


def _gauges(relay: RelayContext) -> dict[str, tuple[str, float]]:
    """Queue depths, read at scrape time: counts only."""
    gauges = {
        "imsg_relay_long_polls_waiting": ("long polls waiting on this worker", float(getattr(relay.push, "waiting", 0)))
    }
    depth = getattr(relay.storage, "queue_depth", None)
    if depth is not None:
        gauges["imsg_relay_storage_queue_depth"] = (
            "storage operations waiting (SQLite: for the writer; PostgreSQL: for a pooled connection)",
            float(depth),
        )
    return gauges
