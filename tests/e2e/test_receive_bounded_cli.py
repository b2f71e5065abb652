"""Issue 18 item 11: a relay answering every fetch with `"more": true` (and serving a
batch newest first) must not make `receive` spin, and receive hands the batch out oldest
first by the sender's authenticated time."""

from __future__ import annotations

import json

from support.cli import assert_ok, run_imsg
from support.relays import ThreadRelay, relay_settings


class AlwaysMore:
    """ASGI middleware: every fetch answer says `"more": true`, its messages reversed;
    counts the fetches."""

    def __init__(self, app):
        self.app = app
        self.fetches = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] != "/v1/messages":
            return await self.app(scope, receive, send)
        self.fetches += 1
        chunks: list[bytes] = []
        start: dict = {}

        async def capture(message):
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    doc = json.loads(b"".join(chunks))
                    doc["more"] = True
                    doc["messages"] = list(reversed(doc["messages"]))
                    body = json.dumps(doc).encode()
                    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                    headers.append((b"content-length", str(len(body)).encode()))
                    await send({**start, "headers": headers})
                    await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, capture)


def test_receive_is_bounded_and_oldest_first(tmp_path):
    with ThreadRelay(relay_settings(tmp_path / "relay"), wrap=AlwaysMore) as relay:
        alice, bob = tmp_path / "alice", tmp_path / "bob"
        assert_ok(run_imsg(alice, "init", "alice@example.com", relay=relay.url, json_mode=True))
        assert_ok(run_imsg(bob, "init", "bob@example.com", relay=relay.url, json_mode=True))
        for text in ("one", "two", "three"):
            assert_ok(run_imsg(alice, "send", "bob@example.com", text, json_mode=True))
        relay.middleware.fetches = 0
        rows = assert_ok(run_imsg(bob, "receive", json_mode=True))
        assert [r["text"] for r in rows if "text" in r] == ["one", "two", "three"]
        assert relay.middleware.fetches <= 3  # the batch, then one with nothing new
