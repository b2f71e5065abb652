"""Liveness and readiness, for load balancers and orchestrators.

- `GET /healthz`: the process serves HTTP (no backend is touched, so a slow database never
  makes an orchestrator kill healthy workers).
- `GET /readyz`: the database, the push backend and the blob store each answered a trivial
  request within READY_TIMEOUT; 503 names which did not. Only fixed words: never a URL, a
  host or an error text that could carry one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from imsg_relay.context import RelayContext

log = logging.getLogger("imsg_relay.health")

READY_TIMEOUT = 2.0


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _check(name: str, probe: Callable[[], Awaitable[object]] | None) -> str:
    if probe is None:
        return "ok"  # nothing to reach (in-process push)
    try:
        await asyncio.wait_for(probe(), READY_TIMEOUT)
    except Exception as exc:
        log.warning("readiness: %s unavailable (%s)", name, type(exc).__name__)
        return "unavailable"
    return "ok"


def readyz(relay: RelayContext) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        names = ("database", "push", "blobs")
        probes = (relay.storage.ping, getattr(relay.push, "ping", None), getattr(relay.blobs, "ping", None))
        results = await asyncio.gather(*(_check(n, p) for n, p in zip(names, probes, strict=True)))
        body = dict(zip(names, results, strict=True))
        ok = all(r == "ok" for r in results)
        return JSONResponse({"status": "ready" if ok else "unavailable", **body}, status_code=200 if ok else 503)

    return endpoint
