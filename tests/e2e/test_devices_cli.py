"""`imsg device add|link|list|remove`, `contacts`, `verify`, `trust` and
`send --on-key-change` in real subprocesses against a relay subprocess (issue 3).

Exit codes: 0 ok, 2 usage, 3 local state, 5 relay refused, 6 security.
"""

from __future__ import annotations

import json
import os
import re
import select
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from imsg.protocol import provisioning as prov

from support.cli import IMSG, run_imsg
from support.cli import assert_ok as ok
from support.cli import clean_env as _env
from support.cli import json_lines as lines


def imsg(home: Path, *args: str, relay: str | None = None, json_mode: bool = True, timeout: float = 60):
    return run_imsg(home, *args, relay=relay, json_mode=json_mode, timeout=timeout)


def json_error(r: subprocess.CompletedProcess, code: int) -> dict:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    errs = lines(r.stderr)
    assert errs and all({"error", "message"} <= set(e) for e in errs), r.stderr
    return errs[-1]


class DeviceAdd:
    """`imsg --json device add` running in the background."""

    def __init__(self, home: Path, *extra: str):
        self.proc = subprocess.Popen(
            [*IMSG, "--home", str(home), "--json", "device", "add", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
            stdin=subprocess.DEVNULL,
        )
        t0 = time.monotonic()
        ready, _, _ = select.select([self.proc.stdout], [], [], 20)
        assert ready, "device add printed no code"
        self.first = json.loads(self.proc.stdout.readline())
        self.first_after = time.monotonic() - t0
        self.code = self.first["code"]

    def finish(self, timeout: float = 60) -> tuple[int, list[dict], str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, lines(out), err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=10)


@pytest.fixture(scope="module")
def env(tmp_path_factory, module_relay_proc):
    return {"url": module_relay_proc.url, "base": tmp_path_factory.mktemp("dev-homes"), "db": module_relay_proc.db_path}


def init(env, name: str) -> Path:
    home = env["base"] / name
    ok(imsg(home, "init", f"{name}@example.com", "--name", name.capitalize(), relay=env["url"]))
    return home


def relay_db(env) -> sqlite3.Connection:
    conn = sqlite3.connect(env["db"], isolation_level=None, timeout=10)
    conn.execute("PRAGMA busy_timeout = 10000")
    return conn


def account_id(home: Path) -> str:
    return ok(imsg(home, "whoami"))[0]["account_id"]


def recheck_now(home: Path) -> subprocess.CompletedProcess:
    """Make every contact's background re-verification due (it runs 12-36 h after the last
    check, and the command has no clock to move), then `imsg receive`, which runs it."""
    from imsg.client import Client

    with Client.open(home) as c:
        with c.store.transaction():
            for key in c.store.settings():
                if key.startswith("trust.next_check:"):
                    c.store.set_setting(key, "0")
    return imsg(home, "receive")


def map_handle_to(env, handle_owner: str, new_owner: str) -> None:
    """The relay's directory now answers `handle_owner`'s handle with `new_owner`'s account
    (and the other way round): the malicious relay re-seals its blinded rows."""
    from handle_helpers import swap_handle_owners

    db = relay_db(env)
    try:
        swap_handle_owners(Path(env["db"]).parent, db, handle_owner, new_owner, _HANDLES)
    finally:
        db.close()


# Every handle this file registers: the relay keeps only tags, so the swap tries these.
_HANDLES = sorted(
    set(re.findall(r"[a-z]+@example\.com", Path(__file__).read_text()))
    | {f"{n}@example.com" for n in re.findall(r'init\(env, "([a-z]+)"\)', Path(__file__).read_text())}
)


def test_add_link_list_sync_remove(env):
    alice, bob = init(env, "dana"), init(env, "erin")
    new = env["base"] / "dana-laptop"
    add = DeviceAdd(alice, "--timeout", "60", "--history", "5")
    try:
        assert set(add.first) >= {"code"} and add.first_after < 10
        assert prov.parse_code(add.code)  # a well-formed pairing code
        r = imsg(new, "device", "link", add.code, "--name", "Dana's laptop", relay=env["url"], json_mode=False)
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert "dana@example.com" in r.stdout
        code, out, err = add.finish()
    finally:
        add.kill()
    assert code == 0, err
    assert out[0]["linked"] is True and out[0]["device_id"] == 2 and out[0]["name"] == "Dana's laptop"
    assert len(out[0]["fingerprint"].replace(" ", "")) == 16

    rows = ok(imsg(alice, "device", "list"))
    assert [set(r) for r in rows] == [{"device_id", "name", "fingerprint", "added_at", "this_device"}] * 2
    assert [(r["device_id"], r["this_device"]) for r in rows] == [(1, True), (2, False)]
    assert rows[1]["name"] == "Dana's laptop" and rows[1]["fingerprint"] == out[0]["fingerprint"]
    assert [(r["device_id"], r["this_device"]) for r in ok(imsg(new, "device", "list"))] == [(1, False), (2, True)]
    r = imsg(alice, "device", "list", json_mode=False)
    assert r.returncode == 0 and "this device" in r.stdout and "Dana's laptop" in r.stdout

    # Fan-out and sync through the CLI.
    sent = ok(imsg(alice, "send", "erin@example.com", "hello from dana's first device"))[0]
    assert sent["devices"] == 1
    assert [m["text"] for m in ok(imsg(bob, "receive"))] == ["hello from dana's first device"]
    ok(imsg(bob, "send", "dana@example.com", "hi dana"))
    for home in (alice, new):
        ok(imsg(home, "receive"))
        hist = ok(imsg(home, "history", "erin@example.com"))
        assert [(m["id"], m["text"]) for m in hist][0] == (sent["id"], "hello from dana's first device")
        assert [m["text"] for m in hist] == ["hello from dana's first device", "hi dana"]

    # Remove the laptop: exit 0, the list shrinks, the laptop is refused with a clear message.
    rows = ok(imsg(alice, "device", "remove", "2", "--yes"))
    assert [r["device_id"] for r in rows] == [1]
    ok(imsg(bob, "send", "dana@example.com", "after removal"))
    r = imsg(new, "receive")
    err = json_error(r, 5)
    assert "removed" in err["message"]
    r = imsg(new, "receive", json_mode=False)
    assert r.returncode == 5 and "removed" in r.stderr
    # whoami on the removed device says so (it said "device 2 of 2"); the other one does not.
    [me] = ok(imsg(new, "whoami"))
    assert me["removed"] is True and me["device_id"] == 2 and me["devices"] == 1
    r = imsg(new, "whoami", json_mode=False)
    assert r.returncode == 0 and "REMOVED" in r.stdout and "of 2" not in r.stdout
    [me] = ok(imsg(alice, "whoami"))
    assert me["removed"] is False and me["devices"] == 1
    assert [m["text"] for m in ok(imsg(alice, "receive"))] == ["after removal"]
    # Removing it again, or this device itself: clear errors.
    assert imsg(alice, "device", "remove", "2").returncode == 3
    assert imsg(alice, "device", "remove", "1").returncode == 2


def test_link_failures_exit_cleanly(env):
    alice = init(env, "fay")
    # Not a code at all: usage (2).
    r = imsg(env["base"] / "fay-x", "device", "link", "not a code", relay=env["url"])
    assert json_error(r, 2)["error"] == "usage"
    # A well-formed code for no channel: local state (3), no account created.
    unknown = prov.make_code(os.urandom(8), os.urandom(10))
    r = imsg(env["base"] / "fay-y", "device", "link", unknown, relay=env["url"])
    assert "unknown or expired" in json_error(r, 3)["message"]
    assert json_error(imsg(env["base"] / "fay-y", "whoami"), 3)["error"] == "no_account"
    # The right channel with a wrong secret: the existing device refuses it (6), the new
    # one is told the code was not accepted (3); neither side changes anything.
    add = DeviceAdd(alice, "--timeout", "30")
    try:
        channel, secret = prov.parse_code(add.code)
        wrong = prov.make_code(channel, bytes(b ^ 1 for b in secret))
        r = imsg(env["base"] / "fay-z", "device", "link", wrong, relay=env["url"])
        code, out, err = add.finish()
    finally:
        add.kill()
    assert code == 6 and out == []
    assert lines(err)[-1]["error"] == "security" and "pairing failed" in lines(err)[-1]["message"]
    assert json_error(r, 3)
    assert json_error(imsg(env["base"] / "fay-z", "whoami"), 3)["error"] == "no_account"
    assert [d["device_id"] for d in ok(imsg(alice, "device", "list"))] == [1]


def test_contacts_verify_trust_and_key_change(env, tmp_path):
    alice, bob, mallory = init(env, "gail"), init(env, "hank"), init(env, "mona")
    ids = {"bob": account_id(bob), "mallory": account_id(mallory)}
    HANK = "hank@example.com"
    ok(imsg(alice, "send", HANK, "hi hank"))
    ok(imsg(bob, "receive"))
    rows = ok(imsg(alice, "contacts"))
    assert len(rows) == 1 and set(rows[0]) >= {"handle", "state", "verified", "account_id", "devices", "held"}
    assert (rows[0]["handle"], rows[0]["state"], rows[0]["verified"], rows[0]["held"]) == (HANK, "unverified", False, 0)
    v_alice = ok(imsg(alice, "verify", HANK))[0]
    v_bob = ok(imsg(bob, "verify", "gail@example.com"))[0]
    assert v_alice["safety_number"] == v_bob["safety_number"] and v_alice["verified"] is False
    assert len(v_alice["safety_number"].replace(" ", "")) == 60
    marked = ok(imsg(alice, "verify", HANK, "--mark"))[0]
    assert marked["verified"] is True and marked["changed"] is False
    assert ok(imsg(alice, "contacts"))[0]["state"] == "verified"
    r = imsg(alice, "verify", HANK, json_mode=False)
    assert r.returncode == 0 and v_alice["safety_number"] in r.stdout

    # The relay maps hank's handle to mona's account. Sends do not look hank up again
    # (issue 12): the background re-verification in receive finds the change (exit 6,
    # identity_changed), and from then on the send is held, exit 6.
    map_handle_to(env, ids["bob"], ids["mallory"])
    assert ok(imsg(alice, "send", HANK, "before the check"))  # not looked up: still to hank
    assert [m["text"] for m in ok(imsg(bob, "receive"))] == ["before the check"]
    r = recheck_now(alice)
    json_error(r, 6)
    assert "identity_changed" in [e["error"] for e in lines(r.stderr)]
    r = imsg(alice, "send", HANK, "held for hank")
    err = json_error(r, 6)
    assert err["error"] == "identity_changed" and len(err["message_id"]) == 32 and r.stdout == ""
    held_id = err["message_id"]
    rows = ok(imsg(alice, "contacts"))
    assert {(c["account_id"], c["state"], c["held"]) for c in rows if c["handle"] == HANK} >= {
        (ids["mallory"], "changed", 1)
    }
    v = ok(imsg(alice, "verify", HANK))[0]
    assert v["changed"] is True and v["safety_number"] != v_alice["safety_number"]
    r = imsg(alice, "verify", HANK, json_mode=False)
    assert "CHANGED" in r.stderr
    assert ok(imsg(mallory, "receive")) == [] and ok(imsg(bob, "receive")) == []
    # trust releases it to the new identity, exactly once.
    [trusted] = ok(imsg(alice, "trust", HANK))
    assert trusted["handle"] == HANK and trusted["trusted"] is True
    assert [(m["id"], m["to"]) for m in trusted["sent"]] == [(held_id, HANK)]
    assert [(m["id"], m["text"]) for m in ok(imsg(mallory, "receive"))] == [(held_id, "held for hank")]
    assert ok(imsg(alice, "trust", HANK)) == [{"handle": HANK, "trusted": True, "sent": []}]
    assert ok(imsg(mallory, "receive")) == []

    # Back to hank's real account: a change again; --on-key-change accept sends at once.
    map_handle_to(env, ids["mallory"], ids["bob"])
    assert recheck_now(alice).returncode == 6
    assert imsg(alice, "send", HANK, "held again").returncode == 6
    sent = ok(imsg(alice, "send", HANK, "accepted", "--on-key-change", "accept"))[0]
    assert [(m["id"], m["text"]) for m in ok(imsg(bob, "receive"))] == [(sent["id"], "accepted")]
    assert imsg(alice, "send", HANK, "x", "--on-key-change", "whatever").returncode == 2

    # And once more to mona: verify --mark records the new key.
    map_handle_to(env, ids["bob"], ids["mallory"])
    assert recheck_now(alice).returncode == 6
    assert imsg(alice, "send", HANK, "held third").returncode == 6
    marked = ok(imsg(alice, "verify", HANK, "--mark"))[0]
    assert marked["verified"] is True and marked["changed"] is False
    rows = [c for c in ok(imsg(alice, "contacts")) if c["handle"] == HANK]
    assert [(c["account_id"], c["state"]) for c in rows] == [(ids["mallory"], "verified")]


def test_receive_from_a_changed_key_exits_6(env):
    """The relay maps ivan's handle to another account, which writes as ivan: the message is
    stored and shown, but `receive` exits 6 with an identity_changed error."""
    from dataclasses import replace

    from imsg.client import Client

    alice, bob, mallory = init(env, "jill"), init(env, "ivan"), init(env, "otto")
    ok(imsg(alice, "send", "ivan@example.com", "hi ivan"))
    map_handle_to(env, account_id(bob), account_id(mallory))
    with Client.open(mallory, relay=env["url"]) as c:  # otto's client claims ivan's handle
        account = c.store.load_account()
        with c.store.transaction():
            c.store.save_account(replace(account, handle="ivan@example.com"))
    ok(imsg(mallory, "send", "jill@example.com", "ivan here, new phone"))
    r = imsg(alice, "receive")
    assert r.returncode == 6, (r.stdout, r.stderr)
    assert [(m["from"], m["text"]) for m in lines(r.stdout)] == [("ivan@example.com", "ivan here, new phone")]
    assert [e["error"] for e in lines(r.stderr)] == ["identity_changed", "security"]
    assert {c["state"] for c in ok(imsg(alice, "contacts")) if c["handle"] == "ivan@example.com"} >= {"changed"}
