"""`imsg sealed ...` and sealed sending through the `imsg` command (subprocesses, one relay)."""

from __future__ import annotations

from .test_devices_cli import imsg, json_error, ok

ALICE, BOB = "alice@example.com", "bob@example.com"


def test_sealed_settings_and_sealed_only_send(module_relay_proc, tmp_path):
    url = module_relay_proc.url
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    ok(imsg(alice, "init", ALICE, relay=url))
    ok(imsg(bob, "init", BOB, relay=url))
    (status,) = ok(imsg(bob, "sealed", "status"))
    assert status["allow_anyone"] is False and status["sealed_only"] is False
    assert status["access_key_set"] is True and len(status["relay_keys"]) == 1
    # No access key for bob: identified, and --json says so.
    (sent,) = ok(imsg(alice, "send", BOB, "hello"))
    assert sent["sealed"] is False and sent["sealed_reason"] == "no_access_key"  # visible, never silent
    # Sealed-only: exit 5, code sealed_only, the message id, and that it is kept.
    assert ok(imsg(alice, "sealed", "only", "on"))[0]["sealed_only"] is True
    err = json_error(imsg(alice, "send", BOB, "only sealed"), 5)
    assert err["error"] == "sealed_only" and err["kept"] == "outbox" and len(err["message_id"]) == 32
    assert "sealed only off" in err["hint"]
    kept = err["message_id"]
    # Bob opens up to anyone: alice's next command delivers the kept message, sealed.
    assert ok(imsg(bob, "sealed", "allow-anyone", "on"))[0]["allow_anyone"] is True
    (nxt,) = ok(imsg(alice, "send", BOB, "now sealed"))
    assert nxt["sealed"] is True and "sealed_reason" not in nxt
    got = ok(imsg(bob, "receive"))
    assert [(m["text"], m["from"]) for m in got] == [("hello", ALICE), ("only sealed", ALICE), ("now sealed", ALICE)]
    assert got[1]["id"] == kept
    r = imsg(alice, "sealed", "only", "maybe")
    assert json_error(r, 2)["error"] == "usage"
    r = imsg(bob, "sealed", "status", json_mode=False)
    assert r.returncode == 0 and "from anyone" in r.stdout
