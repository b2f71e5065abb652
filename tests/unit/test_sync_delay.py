"""IMSG_SYNC_DELAY and the random not_before of copies to our own devices (issue 12, C5)."""

from __future__ import annotations

import pytest

from imsg import errors
from imsg.client.context import DEFAULT_SYNC_DELAY, Context, parse_sync_delay
from imsg.store.memory import MemoryStore


def test_parse():
    assert parse_sync_delay("2-30") == (2.0, 30.0)
    assert parse_sync_delay("0") == (0.0, 0.0)
    assert parse_sync_delay(" 1.5-1.5 ") == (1.5, 1.5)
    for bad in ("x", "3-1", "-1", "1-99999", "1-"):
        with pytest.raises(errors.UsageError):
            parse_sync_delay(bad)


def test_not_before_is_drawn_inside_the_delay(monkeypatch):
    monkeypatch.delenv("IMSG_SYNC_DELAY", raising=False)
    draws = iter([bytes(8), b"\xff" * 8, (12345).to_bytes(8, "big")])
    ctx = Context(MemoryStore(), relay_url=None, now_ms=lambda: 0, rng=lambda n: next(draws))
    assert ctx.sync_delay == DEFAULT_SYNC_DELAY
    got = [ctx.sync_not_before(1000) for _ in range(3)]
    assert all(1000 + 2000 <= t <= 1000 + 30_000 for t in got)
    assert got[0] == 3000  # the lowest draw: exactly the lower bound
    monkeypatch.setenv("IMSG_SYNC_DELAY", "0")
    assert Context(MemoryStore(), relay_url=None, now_ms=lambda: 0, rng=bytes).sync_not_before(5) == 5
