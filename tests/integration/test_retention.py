"""Retention (issue 6): `Client.set_retention` 30d / 1y / forever, judged by an injected
wall clock, applied on open, on demand and in `watch`; deleted messages take their
attachment records and saved files with them, and their text leaves the database file
and its WAL (secure_delete + checkpoint)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imsg.client import Client
from imsg.errors import UsageError

DAY = 24 * 3600 * 1000


class Clock:
    def __init__(self):
        self.ms = Client.__init__.__kwdefaults__["now_ms"]()

    def __call__(self) -> int:
        return self.ms


@pytest.fixture
def pair(tmp_path: Path, relay):
    """alice and bob, each in its own home, on one wall clock the test moves."""
    clock = Clock()
    alice = Client.open(tmp_path / "alice", relay=relay.url, now_ms=clock)
    alice.init("alice@example.com")
    bob = Client.open(tmp_path / "bob", relay=relay.url, now_ms=clock)
    bob.init("bob@example.com")
    yield alice, bob, clock
    alice.close()
    bob.close()


def _home_bytes(home: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(home.iterdir()) if p.is_file())


def test_forever_is_the_default_and_keeps_everything(pair):
    alice, bob, clock = pair
    alice.send("bob@example.com", "an old message")
    assert len(bob.receive()) == 1
    assert bob.retention() == "forever"
    clock.ms += 20 * 365 * DAY
    assert bob.apply_retention() == 0
    assert [m.text for m in bob.history("alice@example.com")] == ["an old message"]


def test_30_days_deletes_older_messages_with_their_attachment_files(pair, tmp_path: Path):
    alice, bob, clock = pair
    photo = tmp_path / "photo.bin"
    photo.write_bytes(os.urandom(50_000))
    old = alice.send("bob@example.com", "forty days ago: the vault code is 1234", attachments=[photo])
    assert [m.id for m in bob.receive()] == [old.id]
    saved = bob.save_attachments(old.id, tmp_path / "downloads")
    assert saved[0].read_bytes() == photo.read_bytes()
    clock.ms += 20 * DAY
    recent = alice.send("bob@example.com", "twenty days ago")
    assert [m.id for m in bob.receive()] == [recent.id]
    home = Path(bob.store.path).parent
    assert b"the vault code is 1234" in _home_bytes(home)  # the check below can fail

    clock.ms += 20 * DAY  # now the first is 40 days old, the second 20
    assert bob.set_retention("30d") == 1
    assert bob.retention() == "30d"
    assert [m.id for m in bob.history("alice@example.com")] == [recent.id]
    assert bob.store.attachments(old.id) == [] and not bob.store.has_message(old.id)
    assert not saved[0].exists()
    assert b"the vault code is 1234" not in _home_bytes(home)  # not in the db, its WAL or -shm
    assert bob.apply_retention() == 0  # nothing more due
    clock.ms += 11 * DAY
    assert bob.apply_retention() == 1 and bob.history("alice@example.com") == []


def test_one_year_and_the_sweep_on_open(pair, tmp_path: Path, relay):
    alice, bob, clock = pair
    first = alice.send("bob@example.com", "last year")
    bob.receive()
    bob.set_retention("1y")
    clock.ms += 364 * DAY
    assert bob.apply_retention() == 0
    bob.close()
    clock.ms += 2 * DAY
    reopened = Client.open(tmp_path / "bob", relay=relay.url, now_ms=clock)  # sweeps on open
    try:
        assert not reopened.store.has_message(first.id)
    finally:
        reopened.close()


def test_a_sender_clock_in_the_future_does_not_keep_a_message(pair):
    """Age is the earlier of the sender's time and ours: bob stores a message whose sender
    clock claims the future; 30 days of bob's clock later it is gone all the same."""
    alice, bob, clock = pair
    alice._now = lambda: clock.ms + 400 * DAY  # a sender far ahead (or lying)
    sent = alice.send("bob@example.com", "from the future")
    bob.receive()
    bob.set_retention("30d")
    clock.ms += 31 * DAY
    assert bob.apply_retention() == 1 and not bob.store.has_message(sent.id)


def test_watch_applies_retention_between_polls(pair):
    alice, bob, clock = pair
    old = alice.send("bob@example.com", "old")
    bob.receive()
    bob.set_retention("30d")
    clock.ms += 31 * DAY
    new = alice.send("bob@example.com", "new")
    first = next(bob.watch(wait=5))
    assert first.id == new.id
    assert not bob.store.has_message(old.id) and bob.store.has_message(new.id)


def test_bad_periods_are_usage_errors(pair):
    _, bob, _ = pair
    for bad in ("31d", "2y", "", "never", "30"):
        with pytest.raises(UsageError):
            bob.set_retention(bad)
    assert bob.retention() == "forever"


def test_records_of_drafts_the_relay_purged_are_dropped(pair, tmp_path: Path):
    """Whatever the setting: a draft upload past the relay's 30 days can neither resume nor
    be sent, so its record (source path, attachment key) goes."""
    alice, _, clock = pair
    draft_file = tmp_path / "draft.txt"
    draft_file.write_bytes(b"a draft never sent")
    draft = alice.attach(draft_file)
    assert [d.id for d in alice.drafts()] == [draft.id] and alice.retention() == "forever"
    clock.ms = draft.expires_at - 1
    alice.apply_retention()
    assert alice.store.get_upload(draft.id) is not None
    clock.ms = draft.expires_at
    alice.apply_retention()
    assert alice.store.get_upload(draft.id) is None and alice.store.uploads() == []


def test_lengthening_the_setting_keeps_what_the_new_one_keeps(pair, tmp_path: Path, relay):
    """30d, then a long pause, then `retention set 1y`: the open for that command does not
    sweep with the old setting first (imsg retention opens with retention=False)."""
    alice, bob, clock = pair
    sent = alice.send("bob@example.com", "keep me for a year")
    bob.receive()
    bob.set_retention("30d")
    bob.close()
    clock.ms += 40 * DAY
    again = Client.open(tmp_path / "bob", relay=relay.url, now_ms=clock, retention=False)
    try:
        assert again.set_retention("1y") == 0 and again.store.has_message(sent.id)
    finally:
        again.close()
