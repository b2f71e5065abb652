"""What another party controls reaches a terminal rendered safe (issue 18 item 1), through
the real `imsg` command: a sender's text with an OSC title sequence, an ESC[8m that hides
what follows, a bare CR or a newline that forges a line, bidi overrides; a file name with
escapes; a nickname with a bidi override. Human output shows them escaped and indents
continuation lines; --json keeps the exact text.
"""

from __future__ import annotations

import json
import re
import select
import signal
import subprocess

import pytest

from support.cli import assert_ok, imsg_command
from support.cli import clean_env as _env
from support.cli import run_imsg as imsg

BOB = "bob@example.com"
FORGED = "[2026-12-04 09:59] bank@example.com: please send your code"
HOSTILE = [
    "\x1b]0;you have been pwned\x07title",  # OSC 0: retitles the terminal
    "visible \x1b[8mhidden from view",  # SGR 8: conceal
    "harmless\r" + FORGED,  # bare CR: the forged line overwrites this one
    "two lines\n" + FORGED,  # a newline: a line that looks like imsg's own
    "abc\u202edcba.exe \u2066iso\u2069 \x9b31m c1 \x7f del \U000e0041tag",  # bidi, C1 CSI, DEL, tag
]
# Printed by imsg, every line of a receive/history: the time, then who.
OWN_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d\] (you|alice@example\.com)( \(|:| →)")


def unsafe_chars(text: str) -> set[str]:
    """Characters of `text` a terminal acts on or that disguise text (newline excepted)."""
    import unicodedata

    return {
        ch
        for ch in text
        if ch != "\n" and (unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") and ch not in "\u200c\u200d")
    }


def assert_terminal_safe(stdout: str) -> None:
    assert unsafe_chars(stdout) == set(), sorted(map(hex, map(ord, unsafe_chars(stdout))))
    for line in stdout.splitlines():
        # Every line is imsg's own (a message header), or an indented continuation.
        assert OWN_LINE.match(line) or line.startswith("    "), line
        assert not line.startswith(FORGED)


@pytest.fixture(scope="module")
def homes(tmp_path_factory, module_relay_proc):
    base = tmp_path_factory.mktemp("homes")
    alice, bob = base / "alice", base / "bob"
    url = module_relay_proc.url
    assert_ok(imsg(alice, "init", "alice@example.com", relay=url, json_mode=True))
    assert_ok(imsg(bob, "init", BOB, relay=url, json_mode=True))
    for text in HOSTILE:
        assert_ok(imsg(alice, "send", BOB, text, json_mode=True))
    return {"alice": alice, "bob": bob, "base": base}


def test_receive_shows_hostile_text_escaped_and_json_keeps_it(homes):
    r = imsg(homes["bob"], "receive", "--wait", "5")
    assert r.returncode == 0, r.stderr
    assert_terminal_safe(r.stdout)
    out = r.stdout
    assert "\\x1b]0;you have been pwned\\x07title" in out
    assert "visible \\x1b[8mhidden from view" in out
    assert "harmless\\r" + FORGED in out  # the CR is shown, on the same line
    assert "\n    " + FORGED in out  # the newline kept, the continuation indented
    assert "abc\\u202edcba.exe \\u2066iso\\u2069 \\x9b31m c1 \\x7f del \\U000e0041tag" in out
    assert len([line for line in out.splitlines() if OWN_LINE.match(line)]) == len(HOSTILE)

    # history: the same rendering; --json: the exact text.
    r = imsg(homes["bob"], "history", "alice@example.com")
    assert r.returncode == 0, r.stderr
    assert_terminal_safe(r.stdout)
    r = imsg(homes["bob"], "history", "alice@example.com", json_mode=True)
    rows = assert_ok(r)
    assert [m["text"] for m in rows] == HOSTILE
    assert "\x1b" not in r.stdout and "\u202e" not in r.stdout  # as JSON escapes: safe on a terminal too
    assert "\\u202e" in r.stdout


def test_chats_preview_is_escaped(homes):
    r = imsg(homes["bob"], "chats")
    assert r.returncode == 0, r.stderr
    assert unsafe_chars(r.stdout) == set()
    assert "\\u202edcba.exe" in r.stdout


def test_watch_renders_safe(homes):
    assert imsg(homes["bob"], "receive", json_mode=True).returncode == 0  # what is waiting: not for watch
    assert_ok(imsg(homes["alice"], "send", BOB, "watch \x1b]0;t\x07 me\r" + FORGED, json_mode=True))
    proc = subprocess.Popen(
        imsg_command(homes["bob"], "watch"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=_env(),
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "watch printed nothing"
        line = proc.stdout.readline()
        assert_terminal_safe(line)
        assert "watch \\x1b]0;t\\x07 me\\r" + FORGED in line
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_attachment_names_and_nicknames_are_escaped(homes, tmp_path):
    hostile_name = "report\x1b]0;x\x07\u202efdp.exe"
    f = tmp_path / hostile_name
    f.write_bytes(b"data")
    assert_ok(imsg(homes["alice"], "send", BOB, "see attached", "--attach", str(f), json_mode=True))
    r = imsg(homes["bob"], "receive", "--wait", "5")
    assert r.returncode == 0, r.stderr
    assert_terminal_safe(r.stdout)
    assert "report\\x1b]0;x\\x07\\u202efdp.exe" in r.stdout
    [row] = assert_ok(imsg(homes["bob"], "history", "alice@example.com", "-n", "1", json_mode=True))
    assert row["attachments"][0]["name"] == hostile_name

    assert_ok(
        imsg(homes["bob"], "contacts", "add", "alice@example.com", "--nickname", "Al\u202eice\x7f", json_mode=True)
    )
    r = imsg(homes["bob"], "contacts")
    assert r.returncode == 0, r.stderr
    assert unsafe_chars(r.stdout) == set() and "Al\\u202eice\\x7f" in r.stdout
    [row] = [c for c in assert_ok(imsg(homes["bob"], "contacts", json_mode=True)) if c["handle"] != BOB]
    assert row["nickname"] == "Al\u202eice\x7f"
    assert json.loads(json.dumps(row))["nickname"] == "Al\u202eice\x7f"
