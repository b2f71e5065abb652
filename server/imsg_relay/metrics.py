"""Prometheus metrics at /metrics: how much the relay does, never for whom.

Labels are only route templates (`/v1/messages/{account_id}`, never the path a request
used), methods, status codes and fixed words. No account id, handle, token, address, blob
id or channel id can reach the exposition: nothing taken from a request becomes a label
value, except the method, which is kept only when it is one of the methods the API has.
(DESIGN: "information about your use of the services in a way that doesn't identify you".)

One registry per relay (not prometheus_client's global one), so tests and embedders can run
several relays in one process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Routes whose bodies are attachment or backup ciphertext: their bytes are counted.
BLOB_ROUTES = ("/v1/blobs/{blob_id}", "/v1/blobs/{blob_id}/parts/{index}", "/v1/backup", "/v1/restore/backup")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _Gauges(Collector):
    """Gauges read at scrape time from the running relay (queue depths)."""

    def __init__(self, read: Callable[[], dict[str, tuple[str, float]]]) -> None:
        self.read = read

    def collect(self) -> Iterable[Metric]:
        for name, (doc, value) in self.read().items():
            family = GaugeMetricFamily(name, doc)
            family.add_metric([], value)
            yield family


class RelayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "imsg_relay_requests",
            "HTTP requests, by route template, method and status (aborted: the client left first)",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "imsg_relay_request_seconds",
            "time from request to the end of the answer, by route template (long polls included)",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.blob_bytes = Counter(
            "imsg_relay_blob_bytes",
            "attachment and backup ciphertext bytes received (in) and sent (out)",
            ("direction",),
            registry=self.registry,
        )
        self.sweeps = Counter(
            "imsg_relay_sweeper_runs",
            "retention sweeper runs, by result (skipped: another worker had the turn)",
            ("result",),
            registry=self.registry,
        )
        self.swept = Counter(
            "imsg_relay_swept_rows",
            "rows the retention sweeper deleted, by kind (envelopes, channels, blobs)",
            ("kind",),
            registry=self.registry,
        )
        for result in ("ok", "failed", "skipped"):
            self.sweeps.labels(result)
        for kind in ("envelopes", "channels", "blobs"):
            self.swept.labels(kind)
        for direction in ("in", "out"):
            self.blob_bytes.labels(direction)

    def add_gauges(self, read: Callable[[], dict[str, tuple[str, float]]]) -> None:
        self.registry.register(_Gauges(read))

    def sweep_done(self, envelopes: int, channels: int, blobs: int) -> None:
        self.sweeps.labels("ok").inc()
        self.swept.labels("envelopes").inc(envelopes)
        self.swept.labels("channels").inc(channels)
        self.swept.labels("blobs").inc(blobs)

    def sweep_failed(self) -> None:
        self.sweeps.labels("failed").inc()

    def sweep_skipped(self) -> None:
        """Another worker was sweeping the same database."""
        self.sweeps.labels("skipped").inc()

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts and times every HTTP request by the route template Starlette matched."""

    def __init__(self, app: ASGIApp, metrics: RelayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = "aborted"  # no answer started: the client left mid-request
        received = 0
        sent = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def counting_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = str(int(message["status"]))
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, counting_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(route, method if method in METHODS else "other", status).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
            if route in BLOB_ROUTES:
                self.metrics.blob_bytes.labels("in").inc(received)
                self.metrics.blob_bytes.labels("out").inc(sent)
