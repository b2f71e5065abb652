"""Session repair through the `imsg` command (subprocesses, one relay): a receiver whose
session state for the sender's device is gone still gets the message, re-sent after its
retry receipt, without replying first."""

from __future__ import annotations

import sqlite3

from .test_devices_cli import imsg, ok
from support.cli import json_lines as lines

ALICE, BOB = "alice@example.com", "bob@example.com"


def test_a_message_that_did_not_decrypt_arrives_after_repair(module_relay_proc, tmp_path):
    url = module_relay_proc.url
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    ok(imsg(alice, "init", ALICE, relay=url))
    ok(imsg(bob, "init", BOB, relay=url))
    ok(imsg(alice, "send", BOB, "hello"))
    assert [m["text"] for m in ok(imsg(bob, "receive"))] == ["hello"]
    with sqlite3.connect(bob / "imsg.db") as db:  # bob's session with alice's device is lost
        db.execute("DELETE FROM sessions")
    (sent,) = ok(imsg(alice, "send", BOB, "after the loss"))
    r = imsg(bob, "receive")
    # refused (alice still sends prekey messages, their one-time key is used), reported...
    assert not [m for m in lines(r.stdout) if m.get("text")]
    assert [w.get("message_id") for w in lines(r.stderr)] == [sent["id"]]
    ok(imsg(alice, "receive"))  # ...the receipt reaches alice, who re-sends over a new session
    got = ok(imsg(bob, "receive"))
    assert [(m["text"], m["id"]) for m in got] == [("after the loss", sent["id"])]
    ok(imsg(alice, "send", BOB, "and on"))
    assert [m["text"] for m in ok(imsg(bob, "receive"))] == ["and on"]
