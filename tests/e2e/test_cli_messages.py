"""Smaller things a new user meets (issue 18 item 13) and names and ids where people need
them (item 7), through the real `imsg` command."""

from __future__ import annotations

import pytest

from support.cli import assert_json_error, assert_ok
from support.cli import run_imsg as imsg

ANN, BEN = "ann@example.com", "ben@example.com"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(256)) * 8


@pytest.fixture(scope="module")
def homes(tmp_path_factory, module_relay_proc):
    base = tmp_path_factory.mktemp("homes")
    ann, ben = base / "ann", base / "ben"
    assert_ok(imsg(ann, "init", ANN, "--name", "Ann", relay=module_relay_proc.url, json_mode=True))
    assert_ok(imsg(ben, "init", BEN, relay=module_relay_proc.url, json_mode=True))
    return {"ann": ann, "ben": ben}


@pytest.mark.parametrize("text", ["   ", " \n\t ", "\u3000"])
def test_whitespace_only_message_is_refused(homes, text):
    doc = assert_json_error(imsg(homes["ann"], "send", BEN, text, json_mode=True), 2, "usage")
    assert "whitespace" in doc["message"]
    doc = assert_json_error(imsg(homes["ann"], "send", BEN, "-", stdin=text + "\n", json_mode=True), 2, "usage")
    r = imsg(homes["ben"], "receive", json_mode=True)
    assert r.returncode == 0 and r.stdout == ""


@pytest.mark.parametrize(("text", "says"), [("x" * 60_001, "60,001 characters"), ("😀" * 20_000, "80,000 bytes")])
def test_too_long_states_the_limit_and_suggests_attach(homes, text, says):
    doc = assert_json_error(imsg(homes["ann"], "send", BEN, "-", stdin=text, json_mode=True), 2, "usage")
    assert "too long" in doc["message"] and says in doc["message"] and "60,000 characters" in doc["message"]
    assert "--attach" in doc["hint"]
    r = imsg(homes["ann"], "send", BEN, "-", stdin=text)
    assert r.returncode == 2 and "hint: send long text as a file: imsg send TO --attach FILE" in r.stderr


def test_the_longest_message_goes(homes):
    [sent] = assert_ok(imsg(homes["ann"], "send", BEN, "-", stdin="y" * 60_000, json_mode=True))
    [got] = assert_ok(imsg(homes["ben"], "receive", "--wait", "5", json_mode=True))
    assert got["id"] == sent["id"] and len(got["text"]) == 60_000


def test_sizes_in_binary_units(homes, tmp_path):
    (tmp_path / "me.png").write_bytes(PNG)
    assert_ok(imsg(homes["ann"], "profile", "set", "--photo", str(tmp_path / "me.png"), json_mode=True))
    r = imsg(homes["ann"], "profile", "show")
    assert r.returncode == 0 and "image/png, 2.0 KiB" in r.stdout and "bytes" not in r.stdout


def test_human_output_gives_the_id_attachment_save_needs(homes, tmp_path):
    f = tmp_path / "plan.txt"
    f.write_text("the plan")
    [sent] = assert_ok(imsg(homes["ann"], "send", BEN, "see the plan", "--attach", str(f), json_mode=True))
    r = imsg(homes["ben"], "receive", "--wait", "5")
    assert r.returncode == 0, r.stderr
    [hint] = [line for line in r.stdout.splitlines() if "[attachment] plan.txt" in line]
    assert hint.endswith(f"save it with: imsg attachment save {sent['id']}")
    out = tmp_path / "saved"
    out.mkdir()
    r = imsg(homes["ben"], "attachment", "save", sent["id"], "--out", str(out))
    assert r.returncode == 0 and (out / "plan.txt").read_text() == "the plan"
    r = imsg(homes["ben"], "history", ANN, "-n", "1")
    assert "saved to" in r.stdout


def test_names_beside_handles_and_nicknames_address_contacts(homes):
    ann, ben = homes["ann"], homes["ben"]
    assert_ok(imsg(ann, "profile", "set", "--name", "Ann Arbor", json_mode=True))
    assert_ok(imsg(ann, "contacts", "add", BEN, json_mode=True))  # the contacts policy shares with ben
    assert_ok(imsg(ann, "send", BEN, "my name travels with this", json_mode=True))
    r = imsg(ben, "receive", "--wait", "5")
    # A name they chose is marked ~ (it is theirs, not yours).
    assert r.returncode == 0 and f"] {ANN} (~Ann Arbor): my name travels with this" in r.stdout, r.stdout
    assert_ok(imsg(ben, "contacts", "add", ANN, "--nickname", "Annie", json_mode=True))
    # By nickname (any case): send, history, verify.
    [sent] = assert_ok(imsg(ben, "send", "annie", "hi by nickname", json_mode=True))
    assert sent["to"] == ANN
    [got] = assert_ok(imsg(ann, "receive", "--wait", "5", json_mode=True))
    assert got["text"] == "hi by nickname"
    r = imsg(ben, "history", "Annie")
    assert r.returncode == 0
    assert f"] {ANN} (Annie): my name travels with this" in r.stdout
    assert f"] you → {ANN} (Annie): hi by nickname" in r.stdout
    assert_ok(imsg(ben, "verify", "Annie", json_mode=True))
    r = imsg(ben, "chats")
    assert r.returncode == 0 and "Annie" in r.stdout
    # A shared name never addresses anyone; an unknown nickname is an invalid handle.
    assert_json_error(imsg(ben, "send", "Ann Arbor", "no", json_mode=True), 2, "invalid_handle")
