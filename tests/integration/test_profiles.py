"""Names and photos through a real relay (issue 7): set, share, fetch, update, rotation on
`off` (an old holder of the key can no longer read the relay's copy), the own-device sync,
nothing readable in the relay's database, and a relay (or a profile owner) that serves
tampered, swapped, oversized or wrongly typed profiles.

Real `Client`s against a real relay on loopback (uvicorn in a thread)."""

from __future__ import annotations

import os
import sqlite3
import stat

import pytest

from imsg import errors
from imsg.client import Client
from imsg.protocol import consts
from imsg.protocol import profile as pf
from imsg.relay_client import AnonymousRelay
from tests.integration import test_devices
from tests.integration.test_devices import link


@pytest.fixture(autouse=True)
def _homes(tmp_path):
    """Where test_devices.link puts the homes of linked devices (beside make_client's)."""
    test_devices._HOMES[:] = [tmp_path / "homes"]


ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@example.com"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + os.urandom(3000)
JPEG = b"\xff\xd8\xff\xe0" + os.urandom(9000)


def photo_file(tmp_path, data: bytes, name: str = "me.png"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def row(client: Client, handle: str):
    return next(c for c in client.contacts() if c.handle == handle)


def relay_rows(relay) -> list[tuple]:
    db = sqlite3.connect(relay.db_path)
    try:
        return db.execute("SELECT account_id, key_id, revision, body FROM profiles").fetchall()
    finally:
        db.close()


def set_relay_body(relay, account_id: str, key_id: bytes, body: bytes) -> None:
    db = sqlite3.connect(relay.db_path, isolation_level=None)
    try:
        db.execute("UPDATE profiles SET key_id = ?, body = ? WHERE account_id = ?", (key_id, body, account_id))
    finally:
        db.close()


def shared(make_client, sharer: str = "alice", reader: str = "bob"):
    """`sharer` has `reader` in contacts and wrote to them once; both clients returned."""
    a, b = make_client(sharer), make_client(reader)
    a.contacts_add(f"{reader}@example.com")
    return a, b


def test_name_and_photo_reach_a_contact_and_the_photo_saves_as_set(make_client, tmp_path):
    alice, bob = shared(make_client)
    shown = alice.profile_set("Ada Lovelace", photo_file(tmp_path, PNG))
    assert (shown.name, shown.photo_type, shown.photo_size, shown.published) == (
        "Ada Lovelace",
        "image/png",
        len(PNG),
        True,
    )
    alice.send(BOB, "hello")
    assert [m.text for m in bob.receive()] == ["hello"]
    listed = row(bob, ALICE)
    assert listed.profile_name == "Ada Lovelace" and listed.nickname == ""
    saved = bob.contact_photo(ALICE, tmp_path / "ada.png")
    assert saved.path.read_bytes() == PNG and saved.type == "image/png" and saved.size == len(PNG)
    assert stat.S_IMODE(os.stat(saved.path).st_mode) == 0o600
    with pytest.raises(errors.LocalStateError):
        bob.contact_photo(ALICE, tmp_path / "ada.png")  # never overwritten
    assert (tmp_path / "ada.png").read_bytes() == PNG
    assert alice.profile_show().shared_with == (BOB,)

    # Bob's own nickname for Alice is shown before her shared name, both are kept.
    bob.contacts_add(ALICE, nickname="Countess")
    listed = row(bob, ALICE)
    assert listed.nickname == "Countess" and listed.profile_name == "Ada Lovelace"


def test_changes_reach_contacts_with_the_next_message(make_client, tmp_path):
    alice, bob = shared(make_client)
    alice.profile_set("Ada")
    alice.send(BOB, "one")
    bob.receive()
    assert row(bob, ALICE).profile_name == "Ada"
    alice.profile_set("Ada King", photo_file(tmp_path, JPEG, "me.jpg"))
    bob.receive()
    assert row(bob, ALICE).profile_name == "Ada"  # nothing new until alice writes
    alice.send(BOB, "two")
    bob.receive()
    assert row(bob, ALICE).profile_name == "Ada King"
    assert bob.contact_photo(ALICE, tmp_path / "new.jpg").path.read_bytes() == JPEG
    alice.profile_set(remove_photo=True)
    alice.send(BOB, "three")
    bob.receive()
    with pytest.raises(errors.LocalStateError):
        bob.contact_photo(ALICE, tmp_path / "gone.jpg")
    assert not (tmp_path / "gone.jpg").exists()


def test_a_name_from_init_is_shared_without_profile_set(make_client):
    alice, bob = shared(make_client)  # make_client's init gives the name "Alice"
    alice.send(BOB, "hi")
    bob.receive()
    assert row(bob, ALICE).profile_name == "Alice"


def test_off_rotates_so_an_old_holder_cannot_read_the_new_copy(make_client, relay, tmp_path):
    alice, bob = shared(make_client)
    alice.profile_set("Ada", photo_file(tmp_path, PNG))
    alice.send(BOB, "you get my key")
    bob.receive()
    old_key = bob.store.contact_by_handle(ALICE).profile_key
    ((_, old_kid, old_rev, old_body),) = relay_rows(relay)

    alice.set_share_policy("off")
    alice.profile_set("Ada, Countess of Lovelace")
    ((account_id, new_kid, new_rev, new_body),) = relay_rows(relay)  # one row: the old copy is gone
    assert new_kid != old_kid and new_rev > old_rev and new_body != old_body
    # The old key derives the old key id (the relay has nothing under it) and cannot open
    # the new copy either.
    assert pf.key_id(old_key, account_id) == old_kid
    with pytest.raises(pf.DecryptionError):
        pf.open_(old_key, account_id, new_body)
    assert pf.open_(alice.store.load_account().profile_key, account_id, new_body)[1].name == "Ada, Countess of Lovelace"

    alice.send(BOB, "still talking")
    bob.receive()
    assert row(bob, ALICE).profile_name == "Ada"  # what bob saved stays with him
    contact = bob.store.contact_by_handle(ALICE)
    bob.store.save_contact(
        contact.__class__(**{**{f: getattr(contact, f) for f in contact.__slots__}, "profile_revision": new_rev})
    )
    bob.receive()  # even told of the new revision, his old key finds nothing
    assert row(bob, ALICE).profile_name == "Ada"


def test_own_devices_follow_name_photo_and_key(make_client, relay, tmp_path):
    alice = make_client("alice")
    alice2, _ = link(make_client, relay, alice, "alice2")
    alice.profile_set("Ada", photo_file(tmp_path, PNG))
    alice2.receive()
    shown = alice2.profile_show()
    assert (shown.name, shown.photo_size, shown.revision) == ("Ada", len(PNG), alice.profile_revision())
    alice.set_share_policy("off")
    alice2.receive()
    assert alice2.store.load_account().profile_key == alice.store.load_account().profile_key
    assert alice2.profile_show().name == "Ada"  # re-read under the new key
    alice2.profile_set("Ada L")  # the other device changes it back
    alice.receive()
    assert alice.profile_show().name == "Ada L" and alice.profile_show().photo_size == len(PNG)


def test_stale_device_cannot_overwrite_a_newer_profile(make_client, relay):
    alice = make_client("alice")
    alice2, _ = link(make_client, relay, alice, "alice2")
    alice.profile_set("newer")
    with pytest.raises(errors.LocalStateError, match="another of your devices"):
        # alice2 has not received the change: its revision is older than the relay's
        alice2._profiles.publish(pf.Profile("older"), required=True)
    ((_, _, _, body),) = relay_rows(relay)
    assert pf.open_(alice.store.load_account().profile_key, alice.whoami().account_id, body)[1].name == "newer"


def test_photo_and_name_limits_on_set(make_client, tmp_path):
    alice = make_client("alice")
    big = photo_file(tmp_path, PNG[:16] + b"\x00" * (consts.PROFILE_PHOTO_MAX + 1 - 16), "big.png")
    with pytest.raises(errors.UsageError, match="512 KiB"):
        alice.profile_set(photo=big)
    for data, name in ((b"GIF89a" + os.urandom(100), "a.gif"), (b"<svg></svg>", "a.svg"), (b"", "empty.png")):
        with pytest.raises(errors.UsageError, match="JPEG, PNG, WebP or HEIC"):
            alice.profile_set(photo=photo_file(tmp_path, data, name))
    with pytest.raises(errors.UsageError):
        alice.profile_set(photo=tmp_path / "missing.png")
    with pytest.raises(errors.UsageError):
        alice.profile_set("evil\x1b[2Jname")
    with pytest.raises(errors.UsageError):
        alice.profile_set(photo=photo_file(tmp_path, PNG), remove_photo=True)
    assert alice.profile_show().photo_size == 0 and alice.profile_show().name == "Alice"
    exact = photo_file(tmp_path, PNG[:16] + b"\x00" * (consts.PROFILE_PHOTO_MAX - 16), "exact.png")
    assert alice.profile_set(photo=exact).photo_size == consts.PROFILE_PHOTO_MAX


@pytest.mark.parametrize("attack", ["flip", "swap_other_account", "truncate", "rollback"])
def test_tampered_or_swapped_profiles_are_rejected(make_client, relay, tmp_path, attack):
    alice, bob = shared(make_client)
    carol = make_client("carol")
    carol.profile_set("Carol")
    alice.profile_set("Ada v1")
    older = relay_rows(relay)
    alice.send(BOB, "first")
    bob.receive()
    assert row(bob, ALICE).profile_name == "Ada v1"
    alice.profile_set("Ada v2")
    rows = {r[0]: r for r in relay_rows(relay)}
    alice_id, carol_id = alice.whoami().account_id, carol.whoami().account_id
    _, kid, _, body = rows[alice_id]
    if attack == "flip":
        tampered = bytearray(body)
        tampered[200] ^= 1
        set_relay_body(relay, alice_id, kid, bytes(tampered))
    elif attack == "swap_other_account":  # carol's blob served as alice's, under alice's key id
        set_relay_body(relay, alice_id, kid, rows[carol_id][3])
    elif attack == "truncate":
        set_relay_body(relay, alice_id, kid, body[:-1])
    else:  # the relay serves the older copy after alice announced a newer one
        set_relay_body(relay, alice_id, kid, next(r for r in older if r[0] == alice_id)[3])
    alice.send(BOB, "second")
    messages = bob.receive()
    assert [m.text for m in messages] == ["second"]  # the message itself is fine
    assert row(bob, ALICE).profile_name == "Ada v1"  # the profile held stays; nothing tampered is kept
    problems = [(p.code, p.message) for p in bob.problems]
    if attack == "rollback":
        assert problems == []  # an older copy is just not taken (alice may not have uploaded yet)
    else:
        assert [c for c, _ in problems] == ["profile_rejected"], problems
        with pytest.raises(errors.SecurityError):
            bob.contact_photo(ALICE, tmp_path / "x.png")


def test_a_profile_owner_cannot_make_a_contact_store_a_wrong_type_or_hostile_name(make_client, relay):
    alice, bob = shared(make_client)
    alice.send(BOB, "first")
    bob.receive()
    account = alice.store.load_account()
    revision = alice.profile_revision() + 1
    with alice.store.transaction():  # as if this revision were published (it is, below)
        alice.store.set_setting("profile.revision", str(revision))
        alice.store.set_setting("profile.published", str(revision))

    def forged(plain: bytes) -> bytes:
        from imsg.crypto import aead

        kid = pf.key_id(account.profile_key, account.account_id)
        nonce = os.urandom(12)
        return (
            b"\x01"
            + kid
            + revision.to_bytes(8, "big")
            + nonce
            + aead.seal(
                pf._cipher_key(account.profile_key, account.account_id),
                nonce,
                plain,
                pf._ad(account.account_id, kid, revision),
            )
        )

    name_block = (4).to_bytes(2, "big") + b"Mal\x1b" + bytes(250)
    gif = b"GIF89a" + bytes(100)
    body = name_block + len(gif).to_bytes(4, "big") + gif + bytes(4096 - len(gif))
    alice.relay().put_profile(pf.key_id(account.profile_key, account.account_id).hex(), forged(body))
    alice.send(BOB, "second")
    bob.receive()
    assert [p.code for p in bob.problems] == ["profile_rejected"]
    held = bob.store.cached_profile(account.account_id)  # the name from init, shared with "first"
    assert (held.name, held.photo, held.revision) == ("Alice", b"", revision - 1)


def test_the_relay_database_holds_no_name_or_photo(make_client, relay, tmp_path):
    name = "Zenobia Quartermaine-Unique"
    alice, bob = shared(make_client)
    alice.profile_set(name, photo_file(tmp_path, JPEG, "z.jpg"))
    alice.send(BOB, "hi")
    bob.receive()
    alice.set_share_policy("off")
    alice.profile_set(name + " II")
    assert row(bob, ALICE).profile_name == name
    needles = [name.encode(), name.encode("utf-16-le"), JPEG[:64], JPEG[4000:4064], JPEG[-64:]]
    files = [p for p in relay.data_dir.rglob("*") if p.is_file()]
    assert any(p.name == "relay.db" for p in files)
    for path in files:  # the database, its WAL, blobs, the secret: all of it
        data = path.read_bytes()
        for needle in needles:
            assert needle not in data, (path, needle[:16])


def test_a_change_made_while_the_relay_is_away_goes_out_with_the_next_share(make_client, relay, closed_url):
    alice, bob = shared(make_client)
    alice2, _ = link(make_client, relay, alice, "alice2")
    alice.send(BOB, "first")
    bob.receive()
    offline = Client(alice.store, relay_url=closed_url)  # the same home, relay out of reach
    with pytest.raises(errors.RelayUnavailableError, match="saved here"):
        offline.profile_set("Ada offline")
    assert alice.profile_show().name == "Ada offline" and not alice.profile_show().published
    alice.send(BOB, "back online")  # publishes first, tells the other device, then shares
    assert alice.profile_show().published
    bob.receive()
    assert row(bob, ALICE).profile_name == "Ada offline"
    alice2.receive()
    assert alice2.profile_show().name == "Ada offline"
    assert alice2.profile_revision() == alice.profile_revision()


def test_a_revision_the_relay_lacks_is_asked_for_once_per_process(make_client, relay):
    alice, bob = shared(make_client)
    alice.profile_set("Ada")
    alice.send(BOB, "hi")
    bob.receive()
    assert row(bob, ALICE).profile_name == "Ada"
    contact = bob.store.contact_by_handle(ALICE)
    with bob.store.transaction():  # announced, but never uploaded
        bob.store.save_contact(
            contact.__class__(
                **{
                    **{f: getattr(contact, f) for f in contact.__slots__},
                    "profile_revision": contact.profile_revision + 5,
                }
            )
        )
    asked = []
    real = AnonymousRelay.get_profile

    def counting(self, *a, **k):
        asked.append(a)
        return real(self, *a, **k)

    AnonymousRelay.get_profile = counting
    try:
        for _ in range(3):
            bob.receive()
    finally:
        AnonymousRelay.get_profile = real
    assert len(asked) == 1 and row(bob, ALICE).profile_name == "Ada"
