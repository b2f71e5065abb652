"""Issue 12, private delivery: what a relay that records every request (method, path,
headers, TCP connection, source address) can learn about who writes to whom. Each of the
issue's rows fixed here has a regression test that failed before the change:

    row 1  the copy to our own devices is sealed, under an id the relay cannot link
    row 2  a forged 401/409 on a sealed send never leads to a credentialed request
    row 4  prekey bundles and the sender certificate are not fetched credentialed at send
    row 5  unauthenticated requests each have a fresh connection of their own
    row 6  an attachment downloads without a credential
    row 8  a flood of refused sealed attempts does not use up a valid sender's budget

`Connections` is a small local recorder (an ASGI middleware around the real relay) that
keeps, per request, the peer address and port of its TCP connection and whether it
carried a credential.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from imsg import errors
from imsg.client import Client
from imsg.relay_client import AnonymousRelay

from support.relays import ThreadRelay, relay_settings

ALICE, BOB = "alice@example.com", "bob@example.com"


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    peer: tuple[str, int]
    token: str  # the bearer token, or ""
    access_key: bool  # an Unidentified-Access-Key header


class Connections:
    """ASGI middleware: one `Seen` per HTTP request."""

    def __init__(self, app):
        self.app = app
        self.log: list[Seen] = []
        self.lock = threading.Lock()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            auth = headers.get(b"authorization", b"").decode()
            seen = Seen(
                scope["method"],
                scope["path"],
                tuple(scope.get("client") or ("", 0)),
                auth.removeprefix("Bearer ") if auth else "",
                b"unidentified-access-key" in headers,
            )
            with self.lock:
                self.log.append(seen)
        await self.app(scope, receive, send)

    def take(self) -> list[Seen]:
        with self.lock:
            out, self.log = self.log, []
        return out


@pytest.fixture
def recorded(tmp_path: Path):
    r = ThreadRelay(relay_settings(tmp_path / "relay-data"), wrap=Connections).start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
def clients(tmp_path: Path, recorded: ThreadRelay):
    opened: list[Client] = []

    def make(name: str, **kwargs) -> Client:
        home = tmp_path / "homes" / name
        fresh = not (home / "imsg.db").exists()
        c = Client.open(home, relay=recorded.url, **kwargs)
        opened.append(c)
        if fresh:
            c.init(f"{name}@example.com", name=name.capitalize())
        return c

    yield make
    for c in opened:
        c.close()


def credentialed_ports(log: list[Seen]) -> set[tuple[str, int]]:
    return {s.peer for s in log if s.token}


# --- C1: the anonymous relay client ---


def test_anonymous_requests_have_no_credential_and_a_connection_each(recorded, clients):
    alice = clients("alice")
    account_id = alice.whoami().account_id
    rec: Connections = recorded.middleware
    rec.take()
    anon = AnonymousRelay(recorded.url)
    for _ in range(3):
        assert anon.get_profile(account_id, "00" * 32, max_bytes=1 << 16) is None
    log = rec.take()
    assert [s.path for s in log] == [f"/v1/profile/{account_id}/{'00' * 32}"] * 3
    assert all(not s.token for s in log)
    assert len({s.peer for s in log}) == 3  # three TCP connections, none reused


def test_proxy_urls_are_checked():
    with pytest.raises(errors.UsageError):
        AnonymousRelay("http://127.0.0.1:1", proxy="http://127.0.0.1:9050")
    with pytest.raises(errors.UsageError):  # imsg picks the username itself, per request
        AnonymousRelay("http://127.0.0.1:1", proxy="socks5://user:pw@127.0.0.1:9050")
    assert AnonymousRelay("http://127.0.0.1:1", proxy="socks5h://127.0.0.1:9050").proxy
