"""`imsg backup on|now|status|off|restore` and `imsg privacy report` in real subprocesses
against a relay subprocess (issue 6). Exit codes: 0 ok, 2 usage (a mistyped code),
3 local state, 5 relay refused (no backup for that code)."""

from __future__ import annotations

import sqlite3

from imsg.protocol import backup as bk

from .test_devices_cli import imsg, json_error, ok


def test_backup_restore_and_off_through_the_cli(tmp_path, module_relay_proc):
    url = module_relay_proc.url
    alice, bob, phone = tmp_path / "alice", tmp_path / "bob", tmp_path / "phone"
    ok(imsg(alice, "init", "alice@example.com", relay=url))
    ok(imsg(bob, "init", "bob@example.com", relay=url))
    ok(imsg(alice, "send", "bob@example.com", "before the backup"))
    ok(imsg(bob, "receive"))

    assert json_error(imsg(alice, "backup", "now"), 3)["error"] == "local_state"
    (doc,) = ok(imsg(alice, "backup", "on"))
    assert set(doc) == {"recovery_code"}
    code = doc["recovery_code"]
    assert bk.parse_recovery_code(code)  # well-formed, checksum included
    human = imsg(alice, "backup", "status", json_mode=False)
    assert human.returncode == 0 and "backups are on" in human.stdout and code not in human.stdout
    (status,) = ok(imsg(alice, "backup", "status"))
    assert status["on"] is True and status["relay"]["size"] == status["size"]
    (now,) = ok(imsg(alice, "backup", "now"))
    assert now["messages"] == 1 and now["contacts"] == 1

    typo = code[:-1] + ("0" if code[-1] != "0" else "1")
    err = json_error(imsg(phone, "backup", "restore", "alice@example.com", typo, relay=url), 2)
    assert "checksum" in err["message"]
    err = json_error(imsg(phone, "backup", "restore", "alice@example.com", bk.recovery_code(bytes(20)), relay=url), 5)
    assert "no backup" in err["message"]
    (me,) = ok(imsg(phone, "backup", "restore", "alice@example.com", code, "--name", "phone", relay=url))
    assert me["handle"] == "alice@example.com" and me["device_id"] == 2 and me["devices"] == 2
    assert [m["text"] for m in ok(imsg(phone, "history", "bob@example.com"))] == ["before the backup"]
    ok(imsg(phone, "send", "bob@example.com", "from the restored phone"))
    assert [m["text"] for m in ok(imsg(bob, "receive"))] == ["from the restored phone"]

    (report,) = ok(imsg(phone, "privacy", "report"))
    db = sqlite3.connect(module_relay_proc.db_path)
    assert (
        [d["device_id"] for d in report["devices"]]
        == [
            r[0]
            for r in db.execute(
                "SELECT device_id FROM devices WHERE account_id = ? ORDER BY device_id", (report["account_id"],)
            )
        ]
        == [1, 2]
    )
    assert [b["size"] for b in report["backups"]] == [
        r[0] for r in db.execute("SELECT size FROM backups WHERE account_id = ?", (report["account_id"],))
    ]
    text = imsg(phone, "privacy", "report", json_mode=False)
    assert text.returncode == 0 and "devices: 2" in text.stdout and "backup:" in text.stdout

    (off,) = ok(imsg(alice, "backup", "off", "--yes"))
    assert off == {"on": False, "deleted": True}
    assert db.execute("SELECT count(*) FROM backups WHERE account_id = ?", (report["account_id"],)).fetchone() == (0,)
    (report,) = ok(imsg(alice, "privacy", "report"))
    assert report["backups"] == []
    err = json_error(imsg(tmp_path / "third", "backup", "restore", "alice@example.com", code, relay=url), 5)
    assert "no backup" in err["message"]
