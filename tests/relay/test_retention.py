"""Retention with an injected clock: past 30 days an envelope is neither served nor kept."""

from __future__ import annotations

import sqlite3

from starlette.testclient import TestClient

from imsg_relay.app import create_app
from imsg_relay.sweeper import sweep

from .helpers import register, send
from support.relays import relay_settings

DAY = 86_400.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_expired_envelope_is_not_served_and_is_swept(tmp_path):
    clock = Clock()
    settings = relay_settings(tmp_path, retention_days=30, sweep_interval=3600)
    app = create_app(settings, clock=clock)
    with TestClient(app) as client:
        alice, bob = register(client), register(client)
        assert send(client, alice, bob, b"old").status_code == 200
        clock.now += 29 * DAY
        assert send(client, alice, bob, b"recent").status_code == 200
        clock.now += 1 * DAY + 1
        bodies = [m["body"] for m in client.get("/v1/messages", headers=bob.headers()).json()["messages"]]
        assert bodies == ["cmVjZW50"]  # only "recent": the old one is past retention
        # still on disk until the sweeper runs; then gone
        db = sqlite3.connect(tmp_path / "relay.db")
        assert db.execute("SELECT count(*) FROM envelopes").fetchone()[0] == 2
        relay = app.state.relay
        cutoff = relay.now_ms() - settings.retention_ms
        deleted = client.portal.call(sweep, relay.storage, cutoff)
        assert deleted == 1
        assert db.execute("SELECT count(*) FROM envelopes").fetchone()[0] == 1
