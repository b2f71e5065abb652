"""Real relays for tests, the two ways users meet one:

- `ThreadRelay`: the relay app under a real uvicorn server in a thread, on a loopback socket
  bound to port 0 (as httpx's own test suite does). The test can pass its own storage, clock
  or middleware, and poke at the database (`db()`), like a malicious operator would.
- `ProcessRelay`: `imsg-relay serve --port 0` as a subprocess, the way scripts and people run
  it, with its stderr in a log file.

Both raise every rate limit (`FAST_LIMITS`): tests send far faster than people do. The
rate-limit behaviour itself belongs to tests/relay, which sets its own limits.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

FAST_LIMITS: dict[str, float] = {
    f"{kind}_{part}": 100_000.0
    for kind in (
        "send",
        "request",
        "lookup",
        "register",
        "discovery",
        "bucket_read",
        "provisioning",
        "provisioning_global",
        "account_read",
        "account_read_global",
        "bundle",
        "sealed_refused",
    )
    for part in ("rate", "burst")
}
FAST_LIMITS_ENV = {f"IMSG_RELAY_{k.upper()}": str(int(v)) for k, v in FAST_LIMITS.items()}
LISTENING = "imsg-relay listening on "


def relay_settings(data_dir: Path, **overrides: Any) -> Any:
    """A relay `Settings` for `data_dir` with FAST_LIMITS, then `overrides`."""
    from imsg_relay.settings import Settings

    return Settings(data_dir=data_dir, **{**FAST_LIMITS, **overrides})


class ThreadRelay:
    """A real uvicorn server on a loopback port in a thread. Use as a context manager, or
    `start()` / `stop()`. `app_kwargs` go to `create_app` (storage, clock, ...); `wrap`, if
    given, wraps the app in an ASGI middleware (e.g. a request recorder) and is kept as
    `.middleware`."""

    def __init__(
        self,
        settings: Any,
        *,
        http: Any = None,  # None: what `imsg-relay serve` runs (httptools, draining)
        wrap: Callable[[Any], Any] | None = None,
        **app_kwargs: Any,
    ) -> None:
        import uvicorn

        from imsg_relay.app import create_app
        from imsg_relay.httpserver import DrainingHttpToolsProtocol

        self.settings = settings
        self.data_dir = Path(settings.data_dir)
        self.app = create_app(settings, **app_kwargs)
        self.middleware = wrap(self.app) if wrap else None
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            self.middleware or self.app,
            loop="asyncio",
            http=http or DrainingHttpToolsProtocol,
            ws="none",
            lifespan="on",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True, name=f"relay-{self.port}"
        )

    @property
    def db_path(self) -> Path:
        return self.data_dir / "relay.db"

    def db(self) -> sqlite3.Connection:
        """A second connection to the relay's live SQLite database (WAL lets both work)."""
        conn = sqlite3.connect(self.db_path, isolation_level=None, timeout=10)
        conn.execute("PRAGMA busy_timeout = 10000")
        return conn

    def start(self, timeout: float = 10.0) -> ThreadRelay:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:  # polls uvicorn's own flag: set once it serves
            if time.monotonic() > deadline or not self.thread.is_alive():
                self.server.should_exit = True
                raise RuntimeError("thread relay did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.should_exit = True
            self.thread.join(10)
        self.sock.close()

    def __enter__(self) -> ThreadRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_thread_relay(data_dir: Path, **overrides: Any) -> ThreadRelay:
    """A started ThreadRelay over `data_dir` with FAST_LIMITS and these settings."""
    return ThreadRelay(relay_settings(data_dir, **overrides)).start()


class ProcessRelay:
    """`imsg-relay serve --port 0` as a subprocess. Its stderr goes to `log_path` (by default
    beside the data directory), so a failing test can show what the relay said."""

    def __init__(
        self,
        data_dir: Path,
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = data_dir
        self.log_path = log_path or data_dir.parent / f"{data_dir.name}.log"
        self.env = {**os.environ, **FAST_LIMITS_ENV, **(env or {})}
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.base: Path | None = None  # set by fixtures that give the relay its own temp dir

    @property
    def db_path(self) -> Path:
        return self.data_dir / "relay.db"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 15.0) -> ProcessRelay:
        cmd = [sys.executable, "-m", "imsg_relay.cli", "serve", "--port", "0", "--data", str(self.data_dir), *self.args]
        with open(self.log_path, "ab") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=self.env)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line.startswith(LISTENING):
            self.proc.kill()
            self.proc.wait(5)
            raise RuntimeError(f"relay did not start: {line!r} {self.log()}")
        self.url = line[len(LISTENING) :].strip()
        return self

    def _wait(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(10)

    def kill(self) -> None:
        """SIGKILL: the relay gets no chance to clean up (crash tests)."""
        self._wait(signal.SIGKILL)

    def terminate(self) -> int:
        """SIGTERM, then its exit status."""
        return self._wait(signal.SIGTERM)

    def stop(self) -> int | None:
        """Stop it if it runs (SIGTERM, then SIGKILL after 10 s); safe to call twice."""
        if self.proc is None:
            return None
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
    data_dir: Path, log_path: Path | None = None, env: dict[str, str] | None = None, timeout: float = 15.0
) -> ProcessRelay:
    return ProcessRelay(data_dir, log_path, env).start(timeout)


def closed_port_url() -> str:
    """A loopback URL nothing listens on (bound, then closed: refused at once)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"
