"""Fixtures shared by the integration and end-to-end tests.

- `relay`: a real uvicorn relay in a thread, on a loopback socket bound to port 0, with a
  fresh data directory (as httpx's own test suite does). Yields a `ThreadRelay` with `url`,
  `data_dir`, `db_path` and `db()` (a sqlite3 connection to poke at, like a malicious
  operator would).
- `relay_proc`: `imsg-relay serve --port 0` as a subprocess (the way users run it), with its
  stderr captured to a file; yields a `ProcessRelay` with `url`, `data_dir`, `log_path`.
  (Both launchers live in tests/support/relays.py.)
- `make_client`: a factory of `Client`s, each in its own home under tmp_path; closed at
  teardown. `make_client("alice")` registers `alice@example.com`.

Test relays raise their rate limits: these tests send far faster than people do. The
rate-limit behaviour itself belongs to tests/relay.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Copies to our own devices leave at once in tests (the default waits 2-30 s so that their
# timing does not link them to the send): the tests check what arrives, not when. The real
# delay has its own test (tests/integration/test_private_delivery.py), with sync_delay=.
os.environ["IMSG_SYNC_DELAY"] = "0"

from support.relays import (
    FAST_LIMITS,
    FAST_LIMITS_ENV,
    ProcessRelay,
    ThreadRelay,
    closed_port_url,
    start_process_relay,
    start_thread_relay,
)

__all__ = ["FAST_LIMITS", "FAST_LIMITS_ENV", "ProcessRelay", "ThreadRelay", "closed_port_url"]
__all__ += ["start_process_relay", "start_thread_relay"]


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[ThreadRelay]:
    r = start_thread_relay(tmp_path / "relay-data")
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
def relay_proc(tmp_path: Path) -> Iterator[ProcessRelay]:
    r = start_process_relay(tmp_path / "relay-proc-data", tmp_path / "relay-proc.log")
    try:
        yield r
    finally:
        r.stop()


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
        r.base = base
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()
