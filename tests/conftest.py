"""Fixtures shared by the integration and end-to-end tests.

- `relay`: a real uvicorn relay in a thread, on a loopback socket bound to port 0, with a
  fresh data directory (as httpx's own test suite does). Yields a `ThreadRelay` with `url`,
  `data_dir`, `db_path` and `db()` (a sqlite3 connection to poke at, like a malicious
  operator would).
- `relay_proc`: `imsg-relay serve --port 0` as a subprocess (the way users run it), with its
  stderr captured to a file; yields a `ProcessRelay` with `url`, `data_dir`, `log_path`.
- `make_client`: a factory of `Client`s, each in its own home under tmp_path; closed at
  teardown. `make_client("alice")` registers `alice@example.com`.

Test relays raise their rate limits: these tests send far faster than people do. The
rate-limit behaviour itself belongs to tests/relay.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

FAST_LIMITS: dict[str, float] = {
    "send_rate": 100_000.0,
    "send_burst": 100_000.0,
    "request_rate": 100_000.0,
    "request_burst": 100_000.0,
    "lookup_rate": 100_000.0,
    "lookup_burst": 100_000.0,
    "register_rate": 100_000.0,
    "register_burst": 100_000.0,
    "discovery_rate": 100_000.0,
    "discovery_burst": 100_000.0,
}
FAST_LIMITS_ENV = {f"IMSG_RELAY_{k.upper()}": str(int(v)) for k, v in FAST_LIMITS.items()}


@dataclass
class ThreadRelay:
    url: str
    data_dir: Path
    server: Any = field(repr=False)
    thread: threading.Thread = field(repr=False)
    sock: socket.socket = field(repr=False)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "relay.db"

    def db(self) -> sqlite3.Connection:
        """A second connection to the relay's live database (WAL lets both work)."""
        conn = sqlite3.connect(self.db_path, isolation_level=None, timeout=10)
        conn.execute("PRAGMA busy_timeout = 10000")
        return conn

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.should_exit = True
            self.thread.join(10)
        self.sock.close()


def start_thread_relay(data_dir: Path, **overrides: Any) -> ThreadRelay:
    import uvicorn

    from imsg_relay.app import create_app
    from imsg_relay.settings import Settings

    settings = Settings(data_dir=data_dir, **{**FAST_LIMITS, **overrides})
    app = create_app(settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        loop="asyncio",
        http="h11",
        ws="none",
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name=f"relay-{port}")
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError("thread relay did not start")
        time.sleep(0.005)
    return ThreadRelay(f"http://127.0.0.1:{port}", data_dir, server, thread, sock)


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[ThreadRelay]:
    r = start_thread_relay(tmp_path / "relay-data")
    try:
        yield r
    finally:
        r.stop()


@dataclass
class ProcessRelay:
    url: str
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen = field(repr=False)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "relay.db"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout:
            self.proc.stdout.close()
        return self.proc.returncode


def start_process_relay(
    data_dir: Path, log_path: Path, env: dict[str, str] | None = None, timeout: float = 15.0
) -> ProcessRelay:
    full_env = {**os.environ, **FAST_LIMITS_ENV, **(env or {})}
    with open(log_path, "ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "imsg_relay.cli", "serve", "--port", "0", "--data", str(data_dir)],
            stdout=subprocess.PIPE,
            stderr=err,
            env=full_env,
        )
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline().decode() if ready else ""
    prefix = "imsg-relay listening on "
    if not line.startswith(prefix):
        proc.kill()
        proc.wait(5)
        raise RuntimeError(f"relay did not start: {line!r} {log_path.read_text(errors='replace')}")
    return ProcessRelay(line[len(prefix) :].strip(), data_dir, log_path, proc)


@pytest.fixture
def relay_proc(tmp_path: Path) -> Iterator[ProcessRelay]:
    r = start_process_relay(tmp_path / "relay-proc-data", tmp_path / "relay-proc.log")
    try:
        yield r
    finally:
        r.stop()


def closed_port_url() -> str:
    """A loopback URL nothing listens on (bound, then closed: refused at once)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def closed_url() -> str:
    return closed_port_url()


def handle_for(name: str) -> str:
    return name if ("@" in name or name.startswith("+")) else f"{name}@example.com"


@pytest.fixture
def make_client(tmp_path: Path, relay: ThreadRelay) -> Iterator[Callable[..., Any]]:
    """make_client(name, handle=None, init=True, relay_url=None, home=None) -> Client.

    The home is tmp_path/"homes"/name, so calling it again with the same name (after
    closing the first) reopens the same home: a client restart."""
    from imsg.client import Client

    opened: list[Client] = []

    def make(
        name: str,
        handle: str | None = None,
        *,
        init: bool = True,
        relay_url: str | None = None,
        home: Path | None = None,
    ) -> Client:
        home = home or tmp_path / "homes" / name
        fresh = not (home / "imsg.db").exists()
        client = Client.open(home, relay=relay_url or relay.url)
        opened.append(client)
        if init and fresh:
            client.init(handle or handle_for(name), name=name.capitalize())
        return client

    yield make
    for c in opened:
        try:
            c.close()
        except Exception:
            pass


def home_of(client: Any) -> Path:
    return Path(client.store.path).parent if hasattr(client.store, "path") else Path()


@pytest.fixture(scope="module")
def module_relay_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessRelay]:
    """One relay subprocess for a whole module (the e2e tests share it: each starts in ~1 s)."""
    base = tmp_path_factory.mktemp("relay-proc")
    r = start_process_relay(base / "data", base / "relay.log")
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
def relay_factory(tmp_path: Path) -> Iterator[Callable[..., ThreadRelay]]:
    """relay_factory(**settings) -> a ThreadRelay with those settings over FAST_LIMITS, in its
    own data directory; all are stopped at teardown."""
    started: list[ThreadRelay] = []

    def start(**overrides: Any) -> ThreadRelay:
        r = start_thread_relay(tmp_path / f"relay-{len(started)}", **overrides)
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()


@pytest.fixture(scope="module")
def module_relay_proc_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ProcessRelay]]:
    """module_relay_proc_factory(env) -> an `imsg-relay serve` subprocess with these extra
    IMSG_RELAY_* variables, for a whole module; `.base` is its temp directory."""
    started: list[ProcessRelay] = []

    def start(env: dict[str, str] | None = None) -> ProcessRelay:
        base = tmp_path_factory.mktemp("relay-proc")
        r = start_process_relay(base / "data", base / "relay.log", env=env)
        r.base = base  # type: ignore[attr-defined]
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()
