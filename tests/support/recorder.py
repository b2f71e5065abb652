"""An ASGI middleware that records (and can slow) the relay's HTTP requests, for the
attachment-transfer tests: wrap a relay with `ThreadRelay(settings, wrap=Recorder)`."""

from __future__ import annotations

import asyncio
import threading


class Recorder:
    """ASGI middleware: logs (method, path, range) of every HTTP request; optionally delays
    each part upload (`put_delay` s before the relay sees it) and each chunk of a blob
    download (`get_chunk_delay` s)."""

    def __init__(self, app):
        self.app = app
        self.log: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()
        self.put_delay = 0.0
        self.get_chunk_delay = 0.0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        method, path = scope["method"], scope["path"]
        headers = dict(scope.get("headers") or [])
        with self.lock:
            self.log.append((method, path, headers.get(b"range", b"").decode()))
        if method == "PUT" and "/parts/" in path and self.put_delay:
            await asyncio.sleep(self.put_delay)
        if method == "GET" and path.startswith("/v1/blobs/") and self.get_chunk_delay:
            delay = self.get_chunk_delay
            inner = send

            async def send(message):
                if message["type"] == "http.response.body" and message.get("body"):
                    await asyncio.sleep(delay)
                await inner(message)

        await self.app(scope, receive, send)

    def clear(self) -> None:
        with self.lock:
            self.log.clear()

    def blob_gets(self) -> list[tuple[str, str]]:
        with self.lock:
            return [
                (p, r)
                for m, p, r in self.log
                if m == "GET" and p.startswith("/v1/blobs/") and not p.endswith("/status")
            ]

    def part_puts(self, blob_id: str | None = None) -> list[int]:
        with self.lock:
            return [
                int(p.rsplit("/", 1)[1])
                for m, p, _ in self.log
                if m == "PUT" and "/parts/" in p and (blob_id is None or f"/{blob_id}/" in p)
            ]
