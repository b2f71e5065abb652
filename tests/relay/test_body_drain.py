"""A request refused for its size gets a readable 413, never a connection reset.

The relay answers 413 before reading an over-limit body; closing then with body bytes
unread would make the kernel reset the connection and lose the answer (issue 16: it made
a backup test fail under load and the client said "relay unreachable, retrying is safe").
These tests send over-limit bodies from many clients at once to a real uvicorn relay, in
a thread and as `imsg-relay serve`, and require every answer to be the 413.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from imsg.errors import RelayRefusedError
from imsg.relay_client import RelayClient
from imsg_relay.limits import DRAIN_BYTES

from .helpers import new_identity, registration
from support.relays import FAST_LIMITS_ENV, ProcessRelay, ThreadRelay, relay_settings

LIMIT = 4096
JSON = {"Content-Type": "application/json"}
# Within the drain (kept alive), and past it (Connection: close and a lingering close).
SIZES = (LIMIT + 1, 300_000, 3_000_000, DRAIN_BYTES + 4_000_000)
CLIENTS = 8
ROUNDS = 12  # per client: 96 over-limit requests, all in flight in parallel


def _chunked(total: int) -> Iterator[bytes]:
    piece = os.urandom(64 * 1024)
    sent = 0
    while sent < total:
        yield piece
        sent += len(piece)


def _hammer(url: str) -> Counter[object]:
    def one(i: int) -> list[object]:
        out: list[object] = []
        with httpx.Client(base_url=url, timeout=30) as c:
            for j in range(ROUNDS):
                size = SIZES[(i + j) % len(SIZES)]
                body = _chunked(size) if j % 5 == 4 else os.urandom(size)  # some without a length
                try:
                    r = c.post("/v1/accounts", content=body, headers=JSON)
                    out.append(r.status_code if r.status_code != 413 else ("413", r.json()["limit"]))
                    # The connection (kept or reopened) still serves the next request.
                    out.append(c.get("/v1/health").status_code)
                except httpx.HTTPError as exc:
                    out.append(type(exc).__name__)
        return out

    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        return Counter(x for answers in pool.map(one, range(CLIENTS)) for x in answers)


def test_over_limit_bodies_get_their_413_under_load(tmp_path):
    with ThreadRelay(relay_settings(tmp_path, max_body=LIMIT)) as relay:
        seen = _hammer(relay.url)
    assert seen == Counter({("413", LIMIT): CLIENTS * ROUNDS, 200: CLIENTS * ROUNDS})


def test_over_limit_bodies_get_their_413_from_imsg_relay_serve(tmp_path):
    relay = ProcessRelay(tmp_path / "relay", env={**FAST_LIMITS_ENV, "IMSG_RELAY_MAX_BODY": str(LIMIT)}).start()
    try:
        seen = _hammer(relay.url)
    finally:
        relay.stop()
    assert seen == Counter({("413", LIMIT): CLIENTS * ROUNDS, 200: CLIENTS * ROUNDS})


def test_a_small_over_limit_body_keeps_the_connection(tmp_path):
    """Within the drain the 413 carries no Connection: close, and the same connection
    serves the next request."""
    with ThreadRelay(relay_settings(tmp_path, max_body=LIMIT)) as relay, httpx.Client(base_url=relay.url) as c:
        r = c.post("/v1/accounts", content=os.urandom(LIMIT * 10), headers=JSON)
        assert r.status_code == 413 and "close" not in r.headers.get("connection", "")
        big = c.post("/v1/accounts", content=os.urandom(DRAIN_BYTES + 1), headers=JSON)
        assert big.status_code == 413 and big.headers["connection"] == "close"
        assert c.get("/v1/health").status_code == 200


@pytest.mark.parametrize("size", [LIMIT * 4 + 1, DRAIN_BYTES * 2])
def test_the_client_reports_a_backup_too_large_as_final(tmp_path, size):
    """The client's message for the 413: refused (exit 5) with the limit, not "unreachable,
    retrying is safe"."""
    with ThreadRelay(relay_settings(tmp_path, max_backup=LIMIT * 4)) as relay:
        with httpx.Client(base_url=relay.url) as c:
            ident = new_identity()
            assert c.post("/v1/accounts", json=registration(ident)).status_code == 201
        with RelayClient(relay.url, token=ident.tokens[1]) as client:
            with pytest.raises(RelayRefusedError) as refused:
                client.put_backup(os.urandom(size), os.urandom(32))
    err = refused.value
    assert err.status == 413 and err.exit_code == 5
    assert f"{LIMIT * 4} byte limit" in str(err) and "retrying is safe" not in (err.hint or "")
