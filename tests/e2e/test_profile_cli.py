"""`imsg contacts [add|remove]`, `imsg profile share|set|show`, `imsg send --share-profile`
and `imsg contacts photo` in real subprocesses against a relay subprocess (issue 7).

Exit codes: 0 ok, 2 usage, 3 local state, 5 relay refused, 6 security.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from imsg.client import Client
from tests.e2e.test_devices_cli import imsg, json_error, ok

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(256)) * 8


@pytest.fixture(scope="module")
def env(tmp_path_factory, module_relay_proc):
    return {
        "url": module_relay_proc.url,
        "base": tmp_path_factory.mktemp("profile-homes"),
        "db": module_relay_proc.db_path,
        "relay": module_relay_proc,
    }


def init(env, name: str) -> Path:
    home = env["base"] / name
    ok(imsg(home, "init", f"{name}@example.com", relay=env["url"]))
    return home


def held_key(home: Path, owner: Path) -> bytes:
    """The profile key `home` holds for `owner`'s account, read from its store."""
    with Client.open(home) as reader, Client.open(owner) as who:
        contact = reader.store.get_contact(who.whoami().account_id)
        return contact.profile_key if contact else b""


def own_key(home: Path) -> bytes:
    with Client.open(home) as c:
        return c.store.load_account().profile_key


def test_contacts_group_add_list_remove(env):
    ann, ben = init(env, "ann"), init(env, "ben")
    json_error(imsg(ann, "contacts", "add", "nobody@example.com"), 5)
    json_error(imsg(ann, "contacts", "add", "not a handle"), 2)
    json_error(imsg(ann, "contacts", "remove", "ben@example.com"), 3)
    row = ok(imsg(ann, "contacts", "add", "ben@example.com", "--nickname", "Benny"))[0]
    assert row["handle"] == "ben@example.com" and row["in_contacts"] is True
    assert row["name"] == "Benny" and row["name_source"] == "nickname" and row["verified"] is False
    rows = ok(imsg(ann, "contacts"))
    assert [(r["handle"], r["name"], r["name_source"], r["state"]) for r in rows] == [
        ("ben@example.com", "Benny", "nickname", "unverified")
    ]
    human = imsg(ann, "contacts", json_mode=False)
    assert human.returncode == 0 and "Benny" in human.stdout and "ben@example.com" in human.stdout
    ok(imsg(ann, "contacts", "remove", "ben@example.com", "--yes"))
    rows = ok(imsg(ann, "contacts"))
    assert rows[0]["in_contacts"] is False and rows[0]["name"] is None
    del ben


def test_share_policies_through_the_command(env):
    cat, dan, eve = init(env, "cat"), init(env, "dan"), init(env, "eve")
    json_error(imsg(cat, "profile", "share", "everyone"), 2)
    ok(imsg(cat, "contacts", "add", "dan@example.com"))
    ok(imsg(cat, "send", "dan@example.com", "contacts: dan gets my key"))
    ok(imsg(cat, "send", "eve@example.com", "eve is not a contact"))
    ok(imsg(dan, "receive"))
    ok(imsg(eve, "receive"))
    assert held_key(dan, cat) == own_key(cat) and held_key(eve, cat) == b""

    assert ok(imsg(cat, "profile", "share", "ask")) == [{"share": "ask"}]
    ok(imsg(cat, "send", "eve@example.com", "no terminal, no flag: nothing shared"))  # stdin is /dev/null
    ok(imsg(eve, "receive"))
    assert held_key(eve, cat) == b""
    json_error(imsg(cat, "send", "eve@example.com", "x", "--share-profile", "maybe"), 2)
    ok(imsg(cat, "send", "eve@example.com", "now yes", "--share-profile", "yes"))
    ok(imsg(eve, "receive"))
    assert held_key(eve, cat) == own_key(cat)

    old = own_key(cat)
    ok(imsg(cat, "profile", "share", "off", "--yes"))
    assert own_key(cat) != old
    ok(imsg(cat, "send", "dan@example.com", "off: nothing new"))
    ok(imsg(dan, "receive"))
    assert held_key(dan, cat) == old  # what dan saved stays


def test_profile_set_show_and_contacts_photo(env, tmp_path):
    fay, gus = init(env, "fay"), init(env, "gus")
    (tmp_path / "fay.png").write_bytes(PNG)
    (tmp_path / "not-an-image.txt").write_text("hello")
    json_error(imsg(fay, "profile", "set"), 2)
    json_error(imsg(fay, "profile", "set", "--photo", str(tmp_path / "not-an-image.txt")), 2)
    json_error(imsg(fay, "profile", "set", "--name", "bad\x1bname"), 2)
    shown = ok(imsg(fay, "profile", "set", "--name", "Fay Wray", "--photo", str(tmp_path / "fay.png")))[0]
    assert shown["name"] == "Fay Wray" and shown["photo"] == {"type": "image/png", "size": len(PNG)}
    assert shown["share"] == "contacts" and shown["published"] is True and shown["shared_with"] == []
    ok(imsg(fay, "contacts", "add", "gus@example.com"))
    ok(imsg(fay, "send", "gus@example.com", "hello gus"))
    ok(imsg(gus, "receive"))
    row = next(r for r in ok(imsg(gus, "contacts")) if r["handle"] == "fay@example.com")
    assert (row["name"], row["name_source"], row["shared_name"]) == ("Fay Wray", "shared", "Fay Wray")
    assert ok(imsg(fay, "profile", "show"))[0]["shared_with"] == ["gus@example.com"]
    human = imsg(fay, "profile", "show", json_mode=False)
    assert human.returncode == 0 and "Fay Wray" in human.stdout and "image/png" in human.stdout

    out = tmp_path / "saved.png"
    saved = ok(imsg(gus, "contacts", "photo", "fay@example.com", "--out", str(out)))[0]
    assert saved == {"handle": "fay@example.com", "path": str(out), "type": "image/png", "size": len(PNG)}
    assert out.read_bytes() == PNG
    json_error(imsg(gus, "contacts", "photo", "fay@example.com", "--out", str(out)), 3)  # exists
    json_error(imsg(gus, "contacts", "photo", "nobody@example.com", "--out", str(tmp_path / "n.png")), 3)
    json_error(imsg(fay, "contacts", "photo", "gus@example.com", "--out", str(tmp_path / "g.png")), 3)  # no photo

    ok(imsg(fay, "profile", "set", "--no-photo", "--name", "Fay"))
    ok(imsg(fay, "send", "gus@example.com", "renamed"))
    ok(imsg(gus, "receive"))
    row = next(r for r in ok(imsg(gus, "contacts")) if r["handle"] == "fay@example.com")
    assert row["name"] == "Fay"
    ok(imsg(gus, "contacts", "add", "fay@example.com", "--nickname", "Auntie"))
    row = next(r for r in ok(imsg(gus, "contacts")) if r["handle"] == "fay@example.com")
    assert (row["name"], row["name_source"], row["shared_name"]) == ("Auntie", "nickname", "Fay")


def test_ask_policy_asks_at_a_terminal_and_remembers(env):
    import os
    import pty
    import select
    import subprocess
    import time

    from tests.e2e.test_devices_cli import IMSG, _env

    hal, ivy = init(env, "hal"), init(env, "ivy")
    ok(imsg(hal, "profile", "share", "ask"))

    def send_at_terminal(text: str, answer: bytes) -> tuple[int, bytes]:
        """`imsg send` with a terminal on stdin and stderr; answers the question if asked."""
        leader, follower = pty.openpty()
        proc = subprocess.Popen(
            [*IMSG, "--home", str(hal), "send", "ivy@example.com", text],
            stdin=follower,
            stdout=subprocess.PIPE,
            stderr=follower,
            env=_env(),
        )
        os.close(follower)
        seen, answered = b"", False
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([leader], [], [], 0.2)
                if ready:
                    try:
                        chunk = os.read(leader, 1024)
                    except OSError:  # EIO: the process closed the terminal
                        break
                    if not chunk:
                        break
                    seen += chunk
                if not answered and b"share your name and photo" in seen:
                    os.write(leader, answer)
                    answered = True
                if proc.poll() is not None and not ready:
                    break
            proc.wait(timeout=60)
        finally:
            os.close(leader)
        return proc.returncode, seen

    code, seen = send_at_terminal("asked: no", b"n\n")
    assert code == 0 and b"share your name and photo with ivy@example.com?" in seen, seen
    ok(imsg(ivy, "receive"))
    assert held_key(ivy, hal) == b""
    code, seen = send_at_terminal("asked again: the no was remembered", b"")
    assert code == 0 and b"share your name" not in seen
    ok(imsg(hal, "send", "ivy@example.com", "changed my mind", "--share-profile", "yes"))
    ok(imsg(ivy, "receive"))
    assert held_key(ivy, hal) == own_key(hal)


def test_relay_database_and_log_hold_no_name_or_photo(env, tmp_path):
    jon, kim = init(env, "jon"), init(env, "kim")
    photo = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40
    (tmp_path / "jon.jpg").write_bytes(photo)
    ok(imsg(jon, "profile", "set", "--name", "Jonquil Peregrine-Astor", "--photo", str(tmp_path / "jon.jpg")))
    ok(imsg(jon, "contacts", "add", "kim@example.com", "--nickname", "Kimberly Nickname"))
    ok(imsg(jon, "send", "kim@example.com", "hello"))
    ok(imsg(kim, "receive"))
    assert (
        next(r for r in ok(imsg(kim, "contacts")) if r["handle"] == "jon@example.com")["name"]
        == "Jonquil Peregrine-Astor"
    )
    relay = env["relay"]
    needles = [b"Jonquil", "Jonquil".encode("utf-16-le"), b"Kimberly Nickname", photo[:40], photo[2000:2040]]
    files = [p for p in relay.data_dir.rglob("*") if p.is_file()] + [relay.log_path]
    assert relay.db_path in files
    for path in files:
        data = path.read_bytes()
        assert not [n for n in needles if n in data], path
