"""The `imsg` command in real subprocesses, two homes, a relay subprocess.

Contract under test (README, cli/__init__.py): data on stdout only; with --json one JSON
object per line on stdout, and an error is a JSON object on stderr; stable exit codes
0 ok, 2 usage, 3 local state, 4 relay unreachable, 5 relay refused, 6 security, 130 SIGINT.
"""

from __future__ import annotations

import json
import select
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from support.cli import IMSG, assert_json_error, json_lines
from support.cli import clean_env as _env
from support.cli import run_imsg as imsg


@pytest.fixture(scope="module")
def homes(tmp_path_factory, module_relay_proc):
    """alice and bob, registered once for the module through the CLI itself."""
    base = tmp_path_factory.mktemp("homes")
    alice, bob = base / "alice", base / "bob"
    url = module_relay_proc.url
    r = imsg(alice, "init", "Alice@Example.com", "--name", "Alice", relay=url, json_mode=True)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["handle"] == "alice@example.com" and doc["name"] == "Alice" and doc["device_id"] == 1
    r = imsg(bob, "init", "+1 555 000 1111", relay=url)
    assert r.returncode == 0, r.stderr
    assert "+15550001111" in r.stdout and r.stderr == ""
    return {"alice": alice, "bob": bob, "url": url, "relay": module_relay_proc, "base": base}


def drain(homes, who: str) -> list[dict]:
    r = imsg(homes[who], "receive", json_mode=True)
    assert r.returncode == 0, r.stderr
    return json_lines(r.stdout)


# --- no relay needed ---


def test_help_works_without_a_relay(tmp_path):
    r = subprocess.run(IMSG + ["--help"], capture_output=True, text=True, timeout=30, env=_env())
    assert r.returncode == 0
    for command in ("init", "send", "receive", "watch", "chats", "history", "whoami"):
        assert command in r.stdout
    r = subprocess.run(IMSG, capture_output=True, text=True, timeout=30, env=_env())
    assert "Usage" in r.stdout + r.stderr  # no arguments: help, not a traceback
    r = subprocess.run(IMSG + ["send", "--help"], capture_output=True, text=True, timeout=30, env=_env())
    assert r.returncode == 0 and "Usage: imsg send" in r.stdout


def test_entry_point_script(tmp_path):
    exe = Path(sys.executable).parent / "imsg"
    if not exe.exists():
        pytest.skip("no imsg entry point next to this python")
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=30, env=_env())
    assert r.returncode == 0 and r.stdout.startswith("imsg ")


@pytest.mark.parametrize(
    "args",
    [
        ["send"],  # missing argument
        ["send", "not a handle", "hi"],  # bad handle
        ["send", "bob@@example.com", "hi"],
        ["history"],
        ["receive", "--wait", "-1"],
        ["no-such-command"],
    ],
)
def test_usage_errors_exit_2(homes, args):
    r = imsg(homes["alice"], *args, json_mode=True)
    doc = assert_json_error(r, 2)
    assert doc["error"] in ("usage", "invalid_handle")
    r = imsg(homes["alice"], *args)
    assert r.returncode == 2 and r.stdout == "" and r.stderr.startswith("error: ")


def test_empty_message_from_stdin_is_a_usage_error(homes):
    r = imsg(homes["alice"], "send", "+15550001111", "-", stdin="", json_mode=True)
    assert_json_error(r, 2, "usage")


def test_no_account_exit_3(tmp_path):
    for args in (["whoami"], ["chats"], ["history", "bob@example.com"], ["receive"]):
        r = imsg(tmp_path / "empty", *args, relay="http://127.0.0.1:9", json_mode=True)
        assert_json_error(r, 3, "no_account")
    r = imsg(tmp_path / "empty", "whoami")
    assert r.returncode == 3 and r.stdout == ""
    assert r.stderr.splitlines()[0].startswith("error: ") and "hint: " in r.stderr


def test_relay_unreachable_exit_4(tmp_path, closed_url):
    r = imsg(tmp_path / "new", "init", "carol@example.com", relay=closed_url, json_mode=True)
    assert_json_error(r, 4, "relay_unavailable")
    # Nothing half-made: the home has no account, init can be retried.
    r = imsg(tmp_path / "new", "whoami", json_mode=True)
    assert_json_error(r, 3, "no_account")


def test_unknown_contact_exit_3(homes):
    r = imsg(homes["alice"], "history", "stranger@example.com", json_mode=True)
    assert_json_error(r, 3, "unknown_contact")


# --- a conversation ---


def test_whoami_json(homes):
    r = imsg(homes["alice"], "whoami", json_mode=True)
    assert r.returncode == 0 and r.stderr == ""
    [doc] = json_lines(r.stdout)
    assert doc["handle"] == "alice@example.com" and doc["name"] == "Alice"
    assert len(doc["account_id"]) == 32 and doc["devices"] == 1 and doc["relay"] == homes["url"]
    assert doc["fingerprint"]
    r = imsg(homes["alice"], "whoami")
    assert "alice@example.com" in r.stdout and doc["account_id"] in r.stdout


def test_send_receive_history_chats(homes):
    alice, bob = homes["alice"], homes["bob"]
    r = imsg(alice, "send", "+15550001111", "Hi Bob! 🥪")
    assert r.returncode == 0, r.stderr
    first_id = r.stdout.strip()
    assert len(first_id) == 32 and int(first_id, 16) >= 0  # stdout: the message id only
    r = imsg(alice, "send", "+1 (555) 000-1111", "-", stdin="line one\nline two\n", json_mode=True)
    assert r.returncode == 0, r.stderr
    [sent] = json_lines(r.stdout)
    assert sent["to"] == "+15550001111" and sent["devices"] == 1 and len(sent["id"]) == 32
    datetime.fromisoformat(sent["sent_at"])

    got = drain(homes, "bob")
    assert [m["text"] for m in got] == ["Hi Bob! 🥪", "line one\nline two"]
    for m in got:
        assert {"id", "from", "to", "text", "sent_at"} <= set(m)
        assert m["from"] == "alice@example.com" and m["to"] == "+15550001111"
        assert m["direction"] == "in" and m["peer"] == "alice@example.com"
        ts = datetime.fromisoformat(m["sent_at"])
        assert ts.tzinfo is not None and abs(ts.timestamp() - time.time()) < 120
    assert [m["id"] for m in got] == [first_id, sent["id"]]
    assert drain(homes, "bob") == []  # acked and shown: not again

    r = imsg(bob, "send", "alice@example.com", "Noon works.")
    assert r.returncode == 0, r.stderr
    r = imsg(alice, "receive", "--wait", "5")
    assert r.returncode == 0 and "Noon works." in r.stdout and "+15550001111" in r.stdout

    r = imsg(alice, "history", "+15550001111", json_mode=True)
    assert r.returncode == 0
    hist = json_lines(r.stdout)
    assert [(m["direction"], m["text"]) for m in hist][-3:] == [
        ("out", "Hi Bob! 🥪"),
        ("out", "line one\nline two"),
        ("in", "Noon works."),
    ]
    r = imsg(alice, "history", "+15550001111", "--limit", "1")
    assert r.returncode == 0 and r.stdout.count("\n") == 1 and "Noon works." in r.stdout

    r = imsg(bob, "chats", json_mode=True)
    assert r.returncode == 0
    chats = json_lines(r.stdout)
    c = next(c for c in chats if c["peer"] == "alice@example.com")
    assert c["messages"] >= 3 and c["last_text"] == "Noon works."
    datetime.fromisoformat(c["last_at"])
    r = imsg(bob, "chats")
    assert r.returncode == 0 and "alice@example.com" in r.stdout


def test_recipient_not_registered_exit_5(homes):
    r = imsg(homes["alice"], "send", "nobody@example.com", "hello?", json_mode=True)
    doc = assert_json_error(r, 5)
    assert "nobody@example.com" in doc["message"]
    r = imsg(homes["alice"], "send", "nobody@example.com", "hello?")
    assert r.returncode == 5 and r.stdout == "" and "not registered" in r.stderr


def test_duplicate_handle_exit_5(homes, tmp_path):
    r = imsg(tmp_path / "dup", "init", "alice@example.com", relay=homes["url"], json_mode=True)
    assert_json_error(r, 5, "handle_taken")


def test_account_exists_exit_3(homes):
    r = imsg(homes["alice"], "init", "alice2@example.com", json_mode=True)
    assert_json_error(r, 3, "account_exists")


def test_send_while_relay_unreachable_is_queued_then_delivered_once(homes, closed_url):
    alice = homes["alice"]
    # Queued only to an identity already pinned: alice must have written to bob once.
    assert imsg(alice, "send", "+15550001111", "before the outage").returncode == 0
    assert [m["text"] for m in drain(homes, "bob")][-1:] == ["before the outage"]
    r = imsg(alice, "send", "+15550001111", "sent while offline", relay=closed_url, json_mode=True)
    doc = assert_json_error(r, 4, "relay_unavailable")
    assert doc.get("message_id") and "queued" in doc["message"]
    r = imsg(alice, "receive", relay=closed_url, json_mode=True)
    assert_json_error(r, 4, "relay_unavailable")
    # The next command that reaches the relay flushes the outbox.
    r = imsg(alice, "send", "+15550001111", "back online")
    assert r.returncode == 0, r.stderr
    got = drain(homes, "bob")
    assert [m["text"] for m in got] == ["sent while offline", "back online"]
    assert got[0]["id"] == doc["message_id"]
    assert drain(homes, "bob") == []


def test_tampered_envelope_exit_6(homes):
    alice, bob = homes["alice"], homes["bob"]
    r = imsg(alice, "send", "+15550001111", "this one gets tampered with")
    assert r.returncode == 0, r.stderr
    mid = r.stdout.strip()
    db = sqlite3.connect(homes["relay"].db_path, isolation_level=None, timeout=10)
    try:
        (body,) = db.execute("SELECT body FROM envelopes WHERE message_id = ?", (mid,)).fetchone()
        b = bytearray(body)
        b[len(b) // 2] ^= 0x80
        db.execute("UPDATE envelopes SET body = ? WHERE message_id = ?", (bytes(b), mid))
    finally:
        db.close()
    r = imsg(bob, "receive", json_mode=True)
    assert r.returncode == 6, (r.stdout, r.stderr)
    assert r.stdout == ""
    docs = json_lines(r.stderr)  # every stderr line is a JSON object
    assert any(d.get("message_id") == mid for d in docs)
    assert docs[-1]["error"] == "security"
    r = imsg(bob, "receive", "--wait", "0")  # dropped and acked: not reported again
    assert r.returncode == 0 and r.stdout == ""
    r = imsg(bob, "history", "alice@example.com", json_mode=True)
    assert "this one gets tampered with" not in r.stdout
    # The session survives.
    assert imsg(alice, "send", "+15550001111", "genuine").returncode == 0
    assert [m["text"] for m in drain(homes, "bob")] == ["genuine"]


def test_watch_json_streams_and_exits_130_on_sigint(homes):
    alice, bob = homes["alice"], homes["bob"]
    drain(homes, "bob")
    proc = subprocess.Popen(
        IMSG + ["--home", str(bob), "--json", "watch"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        time.sleep(0.8)  # started and parked in its long poll
        assert proc.poll() is None, proc.stderr.read()
        r = imsg(alice, "send", "+15550001111", "live!")
        assert r.returncode == 0, r.stderr
        sent_at = time.monotonic()
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready, "watch printed nothing"
        line = proc.stdout.readline()
        latency = time.monotonic() - sent_at
        doc = json.loads(line)
        assert doc["text"] == "live!" and doc["from"] == "alice@example.com"
        assert latency < 2.0
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 130
        rest = proc.stdout.read()
        assert rest == ""
        err = proc.stderr.read()
        assert "Traceback" not in err
        for line in err.splitlines():  # JSON mode: nothing but JSON on stderr
            json.loads(line)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_cli_runner_in_process(homes, monkeypatch):
    """A few checks in process with Typer's CliRunner (no subprocess)."""
    from typer.testing import CliRunner

    from imsg_cli.main import app

    monkeypatch.delenv("IMSG_HOME", raising=False)
    monkeypatch.delenv("IMSG_RELAY", raising=False)
    runner = CliRunner()
    result = runner.invoke(app, ["--home", str(homes["alice"]), "--json", "whoami"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["handle"] == "alice@example.com"
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "send" in result.stdout


def test_main_maps_errors_to_exit_codes_in_process(tmp_path, capsys, monkeypatch):
    from imsg_cli.main import main

    monkeypatch.delenv("IMSG_RELAY", raising=False)
    assert main(["--home", str(tmp_path / "x"), "--json", "whoami"]) == 3
    out = capsys.readouterr()
    assert out.out == "" and json.loads(out.err)["error"] == "no_account"
    assert main(["--home", str(tmp_path / "x"), "send"]) == 2


def test_relay_log_after_the_cli_conversation_is_clean(homes):
    """Runs last in this module: the relay's stderr holds no handle, token or address."""
    log = homes["relay"].log()
    for needle in ("alice@example.com", "+15550001111", "5550001111", "127.0.0.1", "Bearer"):
        assert needle not in log, needle
    for who in ("alice", "bob"):
        db = sqlite3.connect(homes[who] / "imsg.db")
        (token,) = db.execute("SELECT token FROM account").fetchone()
        db.close()
        assert token not in log
