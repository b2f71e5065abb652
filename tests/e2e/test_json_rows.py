"""Every command's --json rows against the schemas written down in docs/JSON.md (issue 18
item 10), through the real `imsg` command. The last test checks that every schema of the
document was exercised, so a row type cannot be documented and never checked."""

from __future__ import annotations

import json
import re
import select
import shutil
import sqlite3
import subprocess
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from support.cli import IMSG, json_lines
from support.cli import clean_env as _env
from support.cli import run_imsg as imsg

DOC = Path(__file__).resolve().parents[2] / "docs" / "JSON.md"
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(256)) * 8
ANN, BEN = "ann@example.com", "ben@example.com"

checker = FormatChecker(formats=())


@checker.checks("date-time", raises=ValueError)
def _iso_utc(value: object) -> bool:
    """ISO 8601, UTC, milliseconds: the one form of time in --json (docs/JSON.md)."""
    if not isinstance(value, str):
        return True  # null, where the schema allows it
    return bool(ISO_UTC.match(value)) and datetime.fromisoformat(value).utcoffset() == timedelta(0)


def _schemas() -> dict[str, dict[str, Any]]:
    text = DOC.read_text()
    found = re.findall(r"^### (\w+)\n(?:(?!^### ).)*?```json\n(.*?)```", text, flags=re.S | re.M)
    schemas = {name: json.loads(body) for name, body in found}
    for schema in schemas.values():
        Draft202012Validator.check_schema(schema)
    return schemas


SCHEMAS = _schemas()
CHECKED: set[str] = set()


def check(kind: str, rows: list[dict[str, Any]], *, at_least: int = 1) -> list[dict[str, Any]]:
    assert len(rows) >= at_least, (kind, rows)
    validator = Draft202012Validator(SCHEMAS[kind], format_checker=checker)
    for row in rows:
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(row)]
        assert not errors, (kind, row, errors)
    CHECKED.add(kind)
    return rows


def ok(r: subprocess.CompletedProcess[str], kind: str, **kw: Any) -> list[dict[str, Any]]:
    """Exit 0; every stdout row is a `kind`; every stderr line a warning."""
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    if r.stderr.strip():
        check("warning", json_lines(r.stderr))
    return check(kind, json_lines(r.stdout), **kw)


@pytest.fixture(scope="module")
def env(tmp_path_factory, module_relay_proc):
    base = tmp_path_factory.mktemp("rows")
    run_dir = Path(tempfile.mkdtemp(prefix="imsg-run-"))  # the unlock agent's socket: a short path
    e = {
        "url": module_relay_proc.url,
        "base": base,
        "db": module_relay_proc.db_path,
        "env": _env(XDG_RUNTIME_DIR=str(run_dir), PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring"),
    }
    yield e
    shutil.rmtree(run_dir, ignore_errors=True)


def j(env, who: str, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    run_env = dict(env["env"], **(extra_env or {}))
    return imsg(env["base"] / who, *args, relay=env["url"], json_mode=True, env=run_env)


def test_account_messages_and_history(env, tmp_path):
    [me] = ok(j(env, "ann", "init", ANN, "--name", "Ann"), "whoami")
    assert me["name"] == "Ann"
    [me] = ok(j(env, "ben", "init", BEN), "whoami")
    assert me["name"] is None  # null, not ""
    ok(j(env, "ann", "whoami"), "whoami")

    [sent] = ok(j(env, "ann", "send", BEN, "hello"), "sent")
    assert sent["from"] == ANN and sent["to"] == BEN
    f = tmp_path / "notes.txt"
    f.write_text("notes")
    [draft] = ok(j(env, "ann", "attach", str(f)), "draft")
    [with_file] = ok(j(env, "ann", "send", BEN, "the file", "--draft", draft["id"]), "sent")

    got = ok(j(env, "ben", "receive", "--wait", "5"), "message", at_least=2)
    assert [m["text"] for m in got] == ["hello", "the file"] and got[1]["attachments"][0]["name"] == "notes.txt"
    ok(j(env, "ben", "history", ANN), "message", at_least=2)
    ok(j(env, "ann", "history", BEN), "message", at_least=2)
    [chat] = ok(j(env, "ben", "chats"), "chat")
    assert chat["peer"] == ANN
    [saved] = ok(j(env, "ben", "attachment", "save", with_file["id"], "--out", str(tmp_path)), "attachment_saved")
    assert Path(saved["path"]).read_text() == "notes"
    rows = ok(j(env, "ben", "history", ANN, "-n", "1"), "message")
    assert rows[0]["attachments"][0]["path"] == saved["path"]
    [deleted] = ok(j(env, "ann", "delete", sent["id"], "--yes"), "deleted")
    assert deleted == {"deleted": 1}


def test_contacts_trust_profile(env, tmp_path):
    [c] = ok(j(env, "ann", "contacts", "add", BEN, "--nickname", "Benjamin"), "contact")
    assert (c["name"], c["name_source"], c["nickname"], c["shared_name"]) == ("Benjamin", "nickname", "Benjamin", None)
    rows = ok(j(env, "ben", "contacts"), "contact")
    row = next(r for r in rows if r["handle"] == ANN)
    assert row["nickname"] is None and row["name_source"] in ("shared", None)
    [v] = ok(j(env, "ann", "verify", BEN), "verification")
    assert v["handle"] == BEN
    [t] = ok(j(env, "ann", "trust", BEN), "trust")  # nothing held: still a result
    assert t == {"handle": BEN, "trusted": True, "sent": []}

    (tmp_path / "ann.png").write_bytes(PNG)
    [p] = ok(j(env, "ann", "profile", "set", "--name", "Ann A.", "--photo", str(tmp_path / "ann.png")), "profile")
    assert p["photo"] == {"type": "image/png", "size": len(PNG)}
    ok(j(env, "ann", "profile", "show"), "profile")
    ok(j(env, "ann", "send", BEN, "my photo"), "sent")
    ok(j(env, "ben", "receive", "--wait", "5"), "message")
    [photo] = ok(j(env, "ben", "contacts", "photo", ANN, "--out", str(tmp_path / "saved.png")), "photo_saved")
    assert photo["size"] == len(PNG)
    [share] = ok(j(env, "ann", "profile", "share", "ask"), "share")
    assert share == {"share": "ask"}
    [gone] = ok(j(env, "ann", "contacts", "remove", BEN, "--yes"), "contact_removed")
    assert gone == {"handle": BEN, "in_contacts": False}
    [c] = [c for c in ok(j(env, "ann", "contacts"), "contact") if c["handle"] == BEN]
    assert c["name"] is None and c["nickname"] is None and c["name_source"] is None


def test_handles_lookup_sealed_retention(env):
    ok(j(env, "ann", "reachable", "list"), "own_handle")
    [h] = ok(j(env, "ann", "reachable", "add", "+15550002222"), "own_handle")
    assert h["handle"] == "+15550002222"
    rows = ok(j(env, "ann", "lookup", BEN, "nobody@example.com"), "lookup", at_least=2)
    assert [r["reachable"] for r in rows] == [True, False]
    [removed] = ok(j(env, "ann", "reachable", "remove", "+15550002222"), "handle_removed")
    assert removed == {"handle": "+15550002222", "removed": True}
    ok(j(env, "ann", "sealed", "status"), "sealed_status")
    assert ok(j(env, "ann", "retention", "show"), "retention") == [{"retention": "forever"}]
    [r] = ok(j(env, "ann", "retention", "set", "1y", "--yes"), "retention")
    assert r["retention"] == "1y" and r["deleted"] == 0


def test_devices(env):
    proc = subprocess.Popen(
        [*IMSG, "--home", str(env["base"] / "ann"), "--json", "device", "add", "--timeout", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env["env"],
        stdin=subprocess.DEVNULL,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "device add printed no code"
        [pairing] = check("pairing", [json.loads(proc.stdout.readline())])
        [me] = ok(j(env, "ann2", "device", "link", pairing["code"], "--name", "tablet"), "whoami")
        assert me["device_id"] == 2
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        [linked] = check("device_linked", json_lines(out))
        assert linked["name"] == "tablet"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    ok(j(env, "ann", "device", "list"), "device", at_least=2)
    [remaining] = ok(j(env, "ann", "device", "remove", "2", "--yes"), "device")
    assert remaining["device_id"] == 1 and remaining["this_device"] is True


def test_backup_and_privacy_report(env, tmp_path):
    ok(j(env, "ann", "backup", "on"), "recovery_code")
    ok(j(env, "ann", "backup", "now"), "backup")
    [st] = ok(j(env, "ann", "backup", "status"), "backup_status")
    assert st["on"] is True and st["relay"] is not None
    [doc] = ok(j(env, "ann", "privacy", "report"), "privacy_report")
    # The relay's epoch ms and 0/1 are ISO 8601 and true/false here, like every other row.
    assert isinstance(doc["sealed_access"][0]["access_key_set"], bool)
    assert all(isinstance(d["created_at"], str) for d in doc["devices"])
    [off] = ok(j(env, "ann", "backup", "off", "--yes"), "backup_off")
    assert off == {"on": False, "deleted": True}


def test_passcode_lock_unlock(env):
    pc = {"IMSG_NEW_PASSCODE": "a fine passcode"}
    ok(j(env, "cal", "init", "cal@example.com"), "whoami")
    assert ok(j(env, "cal", "passcode", "set", extra_env=pc), "passcode") == [{"passcode": True, "keyring": False}]
    ok(j(env, "cal", "unlock", "--for", "90s", extra_env={"IMSG_PASSCODE": "a fine passcode"}), "unlock")
    [lock] = ok(j(env, "cal", "lock"), "lock")
    assert lock == {"locked": True, "was_unlocked": True}
    ok(j(env, "cal", "passcode", "remove", extra_env={"IMSG_PASSCODE": "a fine passcode"}), "passcode")


def test_errors_and_the_redelivered_copy_warning(env):
    r = j(env, "ann", "history", "stranger@example.com")
    assert r.returncode == 3 and r.stdout == ""
    check("error", json_lines(r.stderr))
    # A relay that hands out an envelope again (as a receive beside a running watch sees
    # it): the copy is ignored with a warning that says what happened, not "replay".
    [sent] = ok(j(env, "ann", "send", BEN, "only once"), "sent")
    db = sqlite3.connect(env["db"], isolation_level=None, timeout=10)
    try:
        columns = [c[1] for c in db.execute("PRAGMA table_info(envelopes)") if c[1] != "seq"]
        kept = db.execute(f"SELECT {', '.join(columns)} FROM envelopes WHERE message_id = ?", (sent["id"],)).fetchall()
        assert kept
        assert [m["text"] for m in ok(j(env, "ben", "receive", "--wait", "5"), "message")] == ["only once"]
        # Deleted here, so the copy is not recognised by its id: the ratchet sees a used key.
        ok(j(env, "ben", "delete", sent["id"], "--yes"), "deleted")
        marks = ", ".join("?" * len(columns))
        db.executemany(f"INSERT INTO envelopes ({', '.join(columns)}) VALUES ({marks})", kept)
    finally:
        db.close()
    r = j(env, "ben", "receive")
    assert r.returncode == 0 and r.stdout == "", r.stderr
    [warning] = check("warning", json_lines(r.stderr))
    assert warning["warning"] == "duplicate" and warning["message_id"] == sent["id"]
    assert warning["message"].startswith("already received: redelivered copy") and "replay" not in warning["message"]


def test_every_documented_row_was_checked():
    assert set(SCHEMAS) - CHECKED == set()
