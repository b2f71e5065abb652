"""ASGI middlewares that record the relay's HTTP requests.

- `Recorder`: (method, path, range) of each request, and optional delays, for the
  attachment-transfer tests: `ThreadRelay(settings, wrap=Recorder)`.
- `RecordingRelay`: everything a relay operator compelled to record requests would hold
  (issue 12's adversary): time, method, path, query, headers, body, status, TCP peer. The
  analysis of such a log is tests/support/linkage.py.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


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


# --- the recording relay: what an operator compelled to log every request would hold ---


@dataclass
class Recorded:
    """One HTTP request as a recording relay operator sees it. `peer` is the TCP peer
    (host, port) from the ASGI scope: one pair is one TCP connection (keep-alive reuse shows
    as the same pair; a port the OS reuses later for a new connection is taken for the same
    one, which can only over-report joins). Header names are lower case, values as sent."""

    seq: int
    at: float  # wall clock, seconds since the epoch (time.time) when the request arrived
    t: float  # time.monotonic() when it arrived: for windows between requests
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes | bytearray
    status: int | None = None
    response: bytes | bytearray = b""  # the first `max_response` bytes of the answer's body
    peer: tuple[str, int] = ("", 0)
    note: str = ""  # what the test was doing (RecordingRelay.phase)
    conn: int = 0  # the server's serial number of the TCP connection (0: not known)

    @property
    def connection(self) -> str:
        return f"{self.peer[0]}:{self.peer[1]}" + (f"#{self.conn}" if self.conn else "")

    @property
    def connection_key(self) -> tuple[str, int, int]:
        """What identifies the TCP connection: the peer, and the serial when known (a port
        the OS reuses for a later connection then does not look like the same one)."""
        return (self.peer[0], self.peer[1], self.conn)

    @property
    def address(self) -> str:
        return self.peer[0]

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return None

    @property
    def bearer(self) -> str | None:
        """The Bearer token of the Authorization header, if any."""
        auth = self.header("authorization")
        if auth and auth[:7].lower() == "bearer ":
            return auth[7:].strip()
        return None

    def json(self) -> Any:
        """The body as JSON, or None (empty or not JSON)."""
        try:
            return json.loads(self.body) if self.body else None
        except (ValueError, UnicodeDecodeError):
            return None

    def response_json(self) -> Any:
        try:
            return json.loads(self.response) if self.response else None
        except (ValueError, UnicodeDecodeError):
            return None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["body"] = base64.b64encode(self.body).decode()
        d["response"] = base64.b64encode(self.response).decode()
        d["peer"] = list(self.peer)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recorded:
        d = dict(d)
        d["body"] = base64.b64decode(d["body"])
        d["response"] = base64.b64decode(d.get("response", ""))
        d["peer"] = (d["peer"][0], int(d["peer"][1]))
        d["headers"] = [(k, v) for k, v in d["headers"]]
        return cls(**d)


CONNECTION_SCOPE_KEY = "imsg.connection"


def counting_http_protocol() -> type:
    """uvicorn's httptools protocol, numbering its TCP connections: each request's scope
    gets the serial of the connection it came on (`imsg.connection`). Pass it to
    `ThreadRelay(..., http=counting_http_protocol())`; without it a connection is known
    only by its peer (host, port)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    serial = itertools.count(1)

    class CountingHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport):  # type: ignore[no-untyped-def]
            super().connection_made(transport)
            self.imsg_connection = next(serial)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.scope[CONNECTION_SCOPE_KEY] = self.imsg_connection  # type: ignore[literal-required]

    return CountingHttpToolsProtocol


class RecordingRelay:
    """ASGI middleware that records every HTTP request in full, as a relay operator
    compelled to log everything would: time, method, path, query, every header (the
    Authorization token, Unidentified-Access-Key...), the whole request body, the status,
    the start of the answer, and the TCP peer (address, port). Use it as
    `ThreadRelay(settings, wrap=RecordingRelay)` — with `http=counting_http_protocol()` too,
    to number connections exactly; the log is `.log` (a list of Recorded).

    Request bodies are kept whole (blob parts too, unless `max_body` says otherwise): the
    analysis (tests/support/linkage.py) reads JSON bodies and paths, not the ciphertext."""

    def __init__(self, app: Any, *, max_body: int | None = None, max_response: int = 1 << 16) -> None:
        self.app = app
        self.log: list[Recorded] = []
        self.lock = threading.Lock()
        self.max_body = max_body
        self.max_response = max_response
        self._seq = 0
        self._phase = ""
        # A relay that deviates: forge(record) -> (status, JSON body) answers a request in
        # place of the relay (the request is still read and logged), or None lets it through.
        # It is asked on arrival: the record has the request line and headers, not the body.
        self.forge: Callable[[Recorded], tuple[int, dict[str, Any]] | None] | None = None

    def phase(self, note: str) -> None:
        """Label the requests that arrive from now on (what the scripted test is doing)."""
        self._phase = note

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        with self.lock:
            self._seq += 1
            seq = self._seq
        client = scope.get("client") or ("", 0)
        rec = Recorded(
            seq=seq,
            at=time.time(),
            t=time.monotonic(),
            method=scope["method"],
            path=scope["path"],
            query=(scope.get("query_string") or b"").decode("latin-1"),
            headers=[(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope.get("headers") or []],
            body=bytearray(),  # grows as the body streams in (bytes compare equal to it)
            response=bytearray(),
            peer=(str(client[0]), int(client[1])),
            note=self._phase,
            conn=int(scope.get(CONNECTION_SCOPE_KEY, 0)),
        )
        # Logged on arrival and filled in as the exchange goes: by the time the client has
        # the answer, its record is complete (status and answer are set before they are sent).
        with self.lock:
            self.log.append(rec)
        inner_receive, inner_send = receive, send

        async def receive_():
            message = await inner_receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                if self.max_body is not None:
                    chunk = chunk[: max(0, self.max_body - len(rec.body))]
                rec.body.extend(chunk)
            return message

        async def send_(message):
            if message["type"] == "http.response.start":
                rec.status = int(message["status"])
            elif message["type"] == "http.response.body" and len(rec.response) < self.max_response:
                rec.response.extend(message.get("body", b"")[: self.max_response - len(rec.response)])
            await inner_send(message)

        forged = self.forge(rec) if self.forge is not None else None
        if forged is None:
            await self.app(scope, receive_, send_)
            return
        while (await receive_()).get("more_body"):  # the whole body, as the relay would read it
            pass
        status, doc = forged
        data = json.dumps(doc).encode()
        await send_(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
            }
        )
        await send_({"type": "http.response.body", "body": data})

    def records(self) -> list[Recorded]:
        """The log so far, in arrival order."""
        with self.lock:
            return sorted(self.log, key=lambda r: r.seq)

    def clear(self) -> None:
        with self.lock:
            self.log.clear()

    def dump(self, path: str | os.PathLike[str]) -> None:
        """Write the log as JSON lines (bodies base64), for a person to read or to analyse later."""
        with open(path, "w", encoding="utf-8") as f:
            for r in self.records():
                f.write(json.dumps(r.to_dict()) + "\n")

    @staticmethod
    def load(path: str | os.PathLike[str]) -> list[Recorded]:
        with open(path, encoding="utf-8") as f:
            return [Recorded.from_dict(json.loads(line)) for line in f if line.strip()]
