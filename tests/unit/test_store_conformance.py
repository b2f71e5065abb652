"""One conformance suite for every store: `MemoryStore` (the reference) and `SQLiteStore`.

Covers accounts, prekeys, sessions, contacts, messages (dedup, history order and limit,
conversations, unshown/mark_shown), the outbox, transaction rollback, and for SQLite the
file mode and reopening.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from protocol_helpers import T0, SessionPair, seeded_rng

from imsg.protocol.prekeys import KemPreKey, OneTimePreKey, SignedPreKey
from imsg.protocol.session import Address
from imsg.protocol.stores import Contact, LocalAccount, OutgoingBatch, StoredMessage
from imsg.store.memory import MemoryStore
from imsg.store.sqlite import SQLiteStore

PEER = "ab" * 16
OTHER = "cd" * 16


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path: Path):
    s = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "home" / "imsg.db")
    yield s
    s.close()


def _account(**over) -> LocalAccount:
    rng = seeded_rng(1)
    fields = dict(
        account_id=PEER,
        handle="@alice",
        name="Alice",
        account_public=rng(32),
        account_private=rng(32),
        device_id=1,
        identity_private=rng(32),
        signing_private=rng(32),
        device_list=rng(200),
        relay_url="https://relay.example",
        token="tok",
        created_at=T0,
    )
    fields.update(over)
    return LocalAccount(**fields)


def _msg(i: int, peer: str = PEER, direction: str = "in", sent_at: int | None = None, **over) -> StoredMessage:
    fields = dict(
        message_id=f"{i:032x}",
        peer_account_id=peer,
        peer_handle="@" + peer[:4],
        direction=direction,
        sender_handle="@s",
        recipient_handle="@r",
        text=f"text {i}",
        sent_at=T0 + i if sent_at is None else sent_at,
        stored_at=T0 + 1000 + i,
        sender_device=1,
    )
    fields.update(over)
    return StoredMessage(**fields)


def _prekeys():
    pair = SessionPair(seed=2)
    dev, rng = pair.alice.device, seeded_rng(3)
    return (
        SignedPreKey.generate(dev, 11, T0, rng),
        KemPreKey.generate(dev, 12, T0, rng, last_resort=True),
        OneTimePreKey.generate(13, rng),
    )


# --- accounts ---


def test_account(store):
    assert store.load_account() is None
    a = _account()
    store.save_account(a)
    assert store.load_account() == a
    b = _account(token="new", account_private=None)
    store.save_account(b)
    assert store.load_account() == b


# --- prekeys ---


def test_prekeys(store):
    spk, kpk, otk = _prekeys()
    assert store.get_signed_prekey(11) is None and store.get_kem_prekey(12) is None
    assert store.get_one_time_prekey(13) is None and store.signed_prekeys() == []
    store.save_signed_prekey(spk)
    store.save_kem_prekey(kpk)
    store.save_one_time_prekey(otk)
    assert store.get_signed_prekey(11) == spk
    assert store.get_kem_prekey(12) == kpk
    assert store.get_one_time_prekey(13) == otk
    # kinds are separate name spaces
    assert store.get_signed_prekey(12) is None and store.get_one_time_prekey(11) is None
    spk2 = SignedPreKey.generate(SessionPair(seed=2).alice.device, 5, T0 + 1, seeded_rng(9))
    store.save_signed_prekey(spk2)
    assert [k.key_id for k in store.signed_prekeys()] == [5, 11]
    store.remove_signed_prekey(11)
    store.remove_kem_prekey(12)
    store.remove_one_time_prekey(13)
    store.remove_one_time_prekey(999)  # removing a missing key is fine
    assert store.get_signed_prekey(11) is None and store.get_kem_prekey(12) is None
    assert store.get_one_time_prekey(13) is None
    assert [k.key_id for k in store.signed_prekeys()] == [5]


def test_next_prekey_id_never_repeats(store):
    ids = [store.next_prekey_id() for _ in range(20)]
    assert len(set(ids)) == 20 and ids == sorted(ids)


# --- sessions ---


def test_sessions(store):
    a1, a2 = Address(PEER, 1), Address(PEER, 2)
    assert store.load_session(a1) is None
    store.save_session(a1, b"one")
    store.save_session(a2, b"two")
    assert store.load_session(a1) == b"one" and store.load_session(a2) == b"two"
    store.save_session(a1, b"uno")
    assert store.load_session(a1) == b"uno"
    store.delete_session(a1)
    store.delete_session(a1)
    assert store.load_session(a1) is None and store.load_session(a2) == b"two"
    assert store.load_session(Address(OTHER, 2)) is None


def test_real_session_record_round_trips(store):
    pair = SessionPair()
    pair.handshake()
    raw = pair.raw_record("bob")
    store.save_session(pair.alice.address, raw)
    assert store.load_session(pair.alice.address) == raw


# --- contacts ---


def test_contacts(store):
    c1 = Contact(PEER, "@bob", b"k" * 32, b"list", verified=False, first_seen=T0)
    c2 = Contact(OTHER, "@ann", b"j" * 32, b"list2", verified=True, first_seen=T0 + 1)
    assert store.get_contact(PEER) is None and store.contact_by_handle("@bob") is None
    store.save_contact(c1)
    store.save_contact(c2)
    assert store.get_contact(PEER) == c1
    assert store.contact_by_handle("@ann") == c2
    assert [c.handle for c in store.contacts()] == ["@ann", "@bob"]
    c1b = Contact(PEER, "@bob", b"k" * 32, b"newlist", verified=True, first_seen=T0, profile_key=b"p" * 32)
    store.save_contact(c1b)
    assert store.get_contact(PEER) == c1b and len(store.contacts()) == 2


def test_contact_address_book_and_sharing_fields_round_trip(store):
    c = Contact(
        PEER,
        "@bob",
        b"k" * 32,
        b"list",
        profile_key=b"p" * 32,
        in_contacts=True,
        nickname="Bobby",
        profile_revision=7,
        share_profile="yes",
        shared_profile_key=b"s" * 32,
    )
    store.save_contact(c)
    assert store.get_contact(PEER) == c and store.contact_by_handle("@bob") == c and store.contacts() == [c]


def test_cached_profiles(store):
    from imsg.protocol.stores import CachedProfile

    assert store.cached_profile(PEER) is None
    first = CachedProfile(PEER, 3, "Bob", b"\x89PNG", T0)
    store.save_cached_profile(first)
    store.save_cached_profile(CachedProfile(OTHER, 1, "Ann", b"", T0))
    assert store.cached_profile(PEER) == first
    newer = CachedProfile(PEER, 4, "Robert", b"", T0 + 1)
    store.save_cached_profile(newer)
    assert store.cached_profile(PEER) == newer and store.cached_profile(OTHER).name == "Ann"
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.save_cached_profile(CachedProfile(PEER, 5, "rolled back", b"", T0))
            raise RuntimeError("abort")
    assert store.cached_profile(PEER) == newer


def test_account_profile_key_round_trips(store):
    store.save_account(_account(profile_key=b"q" * 32))
    assert store.load_account().profile_key == b"q" * 32


def test_settings(store):
    assert store.get_setting("retention") is None
    store.set_setting("retention", "30d")
    store.set_setting("start_from", "+14155550100")
    assert store.get_setting("retention") == "30d"
    store.set_setting("retention", "forever")
    assert store.get_setting("retention") == "forever"
    store.set_setting("retention", None)
    store.set_setting("never-set", None)  # deleting what is not there is no error
    assert store.get_setting("retention") is None and store.get_setting("start_from") == "+14155550100"
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.set_setting("start_from", "changed")
            raise RuntimeError("rolled back")
    assert store.get_setting("start_from") == "+14155550100"


def test_own_handles(store):
    from imsg.protocol.stores import OwnHandle

    assert store.own_handles() == []
    a = OwnHandle("alice@example.com", "aa" * 32, "verified", True, True, T0)
    b = OwnHandle("+15551234567", "bb" * 32, "pending", True, False, T0 + 1)
    store.save_own_handle(b)
    store.save_own_handle(a)
    assert store.own_handles() == [a, b]  # in the order they were added
    b2 = OwnHandle("+15551234567", "bb" * 32, "verified", False, False, T0 + 1)
    store.save_own_handle(b2)  # replaces the row for that handle
    assert store.own_handles() == [a, b2]
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.remove_own_handle("alice@example.com")
            store.save_own_handle(OwnHandle("c@example.com", "cc" * 32, "pending", True, False, T0 + 2))
            raise RuntimeError("rolled back")
    assert store.own_handles() == [a, b2]
    store.remove_own_handle("alice@example.com")
    store.remove_own_handle("never@example.com")  # removing what is not there is no error
    assert store.own_handles() == [b2]


def test_settings_lists_every_setting_by_key(store):
    assert store.settings() == {}
    store.set_setting("retention", "1y")
    store.set_setting("backup.state", "{}")
    store.set_setting("gone", "x")
    store.set_setting("gone", None)
    assert store.settings() == {"backup.state": "{}", "retention": "1y"}


# --- messages ---


def test_message_dedup_on_id(store):
    m = _msg(1)
    assert store.add_message(m) is True
    assert store.add_message(_msg(1, text="changed")) is False
    assert store.has_message(m.message_id) and not store.has_message(_msg(2).message_id)
    assert store.history(PEER, 10) == [m]


def test_history_order_and_limit(store):
    # inserted out of order; history is by sender time, newest `limit`, oldest first
    for i in [5, 1, 4, 2, 3]:
        store.add_message(_msg(i))
    store.add_message(_msg(9, peer=OTHER))
    assert [m.text for m in store.history(PEER, 10)] == [f"text {i}" for i in [1, 2, 3, 4, 5]]
    assert [m.text for m in store.history(PEER, 2)] == ["text 4", "text 5"]
    assert store.history(PEER, 0) == []
    assert store.history("ef" * 16, 5) == []
    # ties on sent_at fall back to stored_at
    store.add_message(_msg(20, sent_at=T0 + 100, stored_at=T0 + 5))
    store.add_message(_msg(21, sent_at=T0 + 100, stored_at=T0 + 4))
    assert [m.message_id[-2:] for m in store.history(PEER, 2)] == ["15", "14"]


def test_conversations(store):
    assert store.conversations() == []
    store.add_message(_msg(1, peer=PEER, sent_at=T0 + 10))
    store.add_message(_msg(2, peer=PEER, sent_at=T0 + 30, text="latest with peer"))
    store.add_message(_msg(3, peer=OTHER, sent_at=T0 + 20, text="other"))
    convs = store.conversations()
    assert [(c.peer_account_id, c.last_text, c.last_at, c.messages) for c in convs] == [
        (PEER, "latest with peer", T0 + 30, 2),
        (OTHER, "other", T0 + 20, 1),
    ]


def test_unshown_and_mark_shown(store):
    store.add_message(_msg(1))
    store.add_message(_msg(2, direction="out"))  # our own messages are never "unshown"
    store.add_message(_msg(3))
    assert [m.message_id for m in store.unshown()] == [_msg(1).message_id, _msg(3).message_id]
    store.mark_shown([_msg(1).message_id, "f" * 32])
    assert [m.message_id for m in store.unshown()] == [_msg(3).message_id]
    store.mark_shown([_msg(3).message_id])
    assert store.unshown() == []
    assert len(store.history(PEER, 10)) == 3


# --- outbox ---


def test_outbox(store):
    b1 = OutgoingBatch("1" * 32, PEER, ((1, b"env1"), (2, b"env2")), T0 + 2)
    b2 = OutgoingBatch("2" * 32, PEER, ((1, b"x" * 5000),), T0 + 1)
    b3 = OutgoingBatch("1" * 32, OTHER, (), T0 + 3)
    for b in (b1, b2, b3):
        store.add_outgoing(b)
    assert store.outgoing() == [b2, b1, b3]
    store.add_outgoing(OutgoingBatch("2" * 32, PEER, ((3, b"new"),), T0 + 1))  # replaces
    assert store.outgoing()[0].envelopes == ((3, b"new"),)
    store.remove_outgoing("1" * 32, PEER)
    store.remove_outgoing("9" * 32, PEER)
    assert [(b.message_id, b.account_id) for b in store.outgoing()] == [("2" * 32, PEER), ("1" * 32, OTHER)]


def test_outbox_keeps_the_envelope_id_and_not_before(store):
    """A copy to our own devices: a fresh relay-facing id, and a time before which it waits."""
    b = OutgoingBatch("1" * 32, PEER, ((1, b"env"),), T0, envelope_id="e" * 32, not_before=T0 + 5000)
    store.add_outgoing(b)
    (got,) = store.outgoing()
    assert got == b and got.relay_id == "e" * 32
    assert OutgoingBatch("2" * 32, PEER, (), T0).relay_id == "2" * 32


# --- transactions ---


def _everything(store):
    return (
        store.load_account(),
        store.signed_prekeys(),
        store.get_kem_prekey(12),
        store.get_one_time_prekey(13),
        store.load_session(Address(PEER, 1)),
        store.contacts(),
        store.history(PEER, 100),
        store.conversations(),
        store.unshown(),
        store.outgoing(),
    )


def test_transaction_rollback_leaves_everything_as_before(store):
    spk, kpk, otk = _prekeys()
    with store.transaction():
        store.save_account(_account())
        store.save_signed_prekey(spk)
        store.save_kem_prekey(kpk)
        store.save_one_time_prekey(otk)
        store.save_session(Address(PEER, 1), b"record")
        store.save_contact(Contact(PEER, "@bob", b"k" * 32, b"l"))
        store.add_message(_msg(1))
        store.add_outgoing(OutgoingBatch("1" * 32, PEER, ((1, b"e"),), T0))
    before = _everything(store)
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.save_account(_account(token="other"))
            store.remove_signed_prekey(11)
            store.remove_kem_prekey(12)
            store.remove_one_time_prekey(13)
            store.save_session(Address(PEER, 1), b"advanced")
            store.save_contact(Contact(OTHER, "@eve", b"e" * 32, b"l"))
            store.add_message(_msg(2))
            store.mark_shown([_msg(1).message_id])
            store.remove_outgoing("1" * 32, PEER)
            with store.transaction():  # nested: joins the outer transaction
                store.delete_session(Address(PEER, 1))
            raise RuntimeError("crash before commit")
    assert _everything(store) == before
    # and the store still works after the rollback
    with store.transaction():
        store.add_message(_msg(3))
    assert len(store.history(PEER, 10)) == 2


def test_transaction_commits(store):
    with store.transaction():
        store.save_session(Address(PEER, 1), b"r")
        with store.transaction():
            store.add_message(_msg(1))
    assert store.load_session(Address(PEER, 1)) == b"r" and store.has_message(_msg(1).message_id)


# --- SQLite specifics ---


def test_sqlite_opens_a_home_made_before_later_columns(tmp_path: Path):
    """A home whose tables predate a column (profile_key here) gains it on open, and the
    rows it held read back with the column's default."""
    import sqlite3

    path = tmp_path / "old" / "imsg.db"
    SQLiteStore(path).close()
    db = sqlite3.connect(path)
    db.executescript(
        "DROP TABLE contacts; CREATE TABLE contacts (account_id TEXT PRIMARY KEY, handle TEXT NOT NULL, "
        "account_key BLOB NOT NULL, device_list BLOB NOT NULL, verified INTEGER NOT NULL DEFAULT 0, "
        "first_seen INTEGER NOT NULL, status TEXT NOT NULL DEFAULT 'ok');"
        "INSERT INTO contacts VALUES ('a', '@bob', x'00', x'01', 1, 5, 'ok');"
    )
    db.close()
    store = SQLiteStore(path)
    try:
        assert store.get_contact("a") == Contact("a", "@bob", b"\x00", b"\x01", True, 5, "ok", b"")
    finally:
        store.close()


def test_sqlite_file_is_private_and_survives_reopen(tmp_path: Path):
    path = tmp_path / "home" / "imsg.db"
    s = SQLiteStore(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    spk, kpk, otk = _prekeys()
    with s.transaction():
        s.save_account(_account())
        s.save_signed_prekey(spk)
        s.save_kem_prekey(kpk)
        s.save_one_time_prekey(otk)
        s.save_session(Address(PEER, 1), b"record")
        s.save_contact(Contact(PEER, "@bob", b"k" * 32, b"l", True, T0))
        s.add_message(_msg(1))
        s.add_outgoing(OutgoingBatch("1" * 32, PEER, ((1, b"e"),), T0))
    next_id = s.next_prekey_id()
    before = _everything(s)
    s.close()
    s2 = SQLiteStore(path)
    try:
        assert _everything(s2) == before
        assert s2.next_prekey_id() == next_id + 1
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        s2.close()


def test_delete_messages_returns_saved_attachment_files(store):
    from imsg.protocol.stores import StoredAttachment, StoredMessage

    with store.transaction():
        for i in range(2):
            store.add_message(
                StoredMessage(
                    f"{i:032x}",
                    "a" * 32,
                    "bob@example.com",
                    "in",
                    "bob@example.com",
                    "me@example.com",
                    f"m{i}",
                    1000 + i,
                    2000 + i,
                )
            )
            store.add_attachments([StoredAttachment(f"{i:032x}", 0, "b" * 32, bytes(32), bytes(32), 16, "f", "t")])
        store.set_saved_path(f"{0:032x}", 0, "/tmp/saved-file")
    with store.transaction():
        paths = store.delete_messages([f"{0:032x}", "f" * 32])
    assert paths == ["/tmp/saved-file"]
    assert not store.has_message(f"{0:032x}") and store.attachments(f"{0:032x}") == []
    assert store.has_message(f"{1:032x}") and len(store.attachments(f"{1:032x}")) == 1


def test_messages_older_than_uses_the_earlier_clock(store):
    """Retention's query: age is min(sent_at, stored_at), so a sender's future timestamp
    cannot keep a message past the setting, and a backdated one only goes sooner."""
    with store.transaction():
        store.add_message(_msg(1, sent_at=100, stored_at=5000))  # old by the sender's clock
        store.add_message(_msg(2, sent_at=9000, stored_at=200))  # "future" sender clock, stored long ago
        store.add_message(_msg(3, sent_at=4000, stored_at=4100))  # recent
    assert sorted(store.messages_older_than(1000, 10)) == [_msg(1).message_id, _msg(2).message_id]
    assert len(store.messages_older_than(1000, 1)) == 1
    assert store.messages_older_than(100, 10) == []  # strictly older
    assert sorted(store.messages_older_than(10**15, 10)) == sorted(_msg(i).message_id for i in (1, 2, 3))
    store.checkpoint()  # no-op or WAL truncation: harmless either way


def test_sqlite_retention_query_uses_the_age_index(tmp_path: Path):
    s = SQLiteStore(tmp_path / "home" / "imsg.db")
    try:
        plan = s._db.execute(
            "EXPLAIN QUERY PLAN SELECT message_id FROM messages WHERE min(sent_at, stored_at) < ? LIMIT ?", (1, 1)
        ).fetchall()
        assert any("messages_age" in row[-1] for row in plan), plan
    finally:
        s.close()


@pytest.mark.parametrize("key", [None, bytes(range(32))])
def test_sqlite_keeps_temporary_data_in_memory(tmp_path: Path, key):
    """Sorts and temporary indexes never go to a temp file (it would hold plaintext rows,
    outside the encrypted database and outside the home); deletions overwrite."""
    s = SQLiteStore(tmp_path / "home" / "imsg.db", key=key)
    try:
        assert s._db.execute("PRAGMA temp_store").fetchone()[0] == 2  # MEMORY
        assert s._db.execute("PRAGMA secure_delete").fetchone()[0] == 1
        assert s._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        s.close()
    header = (tmp_path / "home" / "imsg.db").read_bytes()[:16]
    assert (header == b"SQLite format 3\x00") == (key is None)
