"""Who gets our profile key (issue 7, name and photo): the share policies contacts / ask /
off, rotation when sharing is turned off, fan-out of the key to every recipient and every
device of each, and the own-device sync of what was shared with whom.

Real `Client`s against a real relay on loopback (uvicorn in a thread)."""

from __future__ import annotations

import pytest

from imsg import errors
from imsg.client import Client
from tests.integration import test_devices
from tests.integration.test_devices import link


@pytest.fixture(autouse=True)
def _homes(tmp_path):
    """Where test_devices.link puts the homes of linked devices (beside make_client's)."""
    test_devices._HOMES[:] = [tmp_path / "homes"]


ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@example.com"


def key_at(client: Client, who: Client) -> bytes:
    """The profile key `client` holds for `who`'s account (b"" if none)."""
    contact = client.store.get_contact(who.whoami().account_id)
    return contact.profile_key if contact is not None else b""


def own_key(client: Client) -> bytes:
    return client.store.load_account().profile_key


def shared_with(client: Client, handle: str) -> bytes:
    return client.store.contact_by_handle(handle).shared_profile_key


def test_contacts_policy_shares_only_with_people_in_contacts(make_client):
    alice, bob, carol = make_client("alice"), make_client("bob"), make_client("carol")
    assert alice.share_policy() == "contacts"
    alice.send(BOB, "hi bob")
    alice.send(CAROL, "hi carol")
    bob.receive()
    carol.receive()
    assert key_at(bob, alice) == b"" and key_at(carol, alice) == b""  # nobody in alice's contacts yet

    added = alice.contacts_add(BOB, nickname="Bobby")
    assert added.in_contacts and added.nickname == "Bobby"
    alice.send(BOB, "now you know my name")
    alice.send(CAROL, "you still do not")
    assert [m.text for m in bob.receive()] == ["now you know my name"]
    carol.receive()
    assert key_at(bob, alice) == own_key(alice) and len(own_key(alice)) == 32
    assert key_at(carol, alice) == b""
    assert shared_with(alice, BOB) == own_key(alice) and shared_with(alice, CAROL) == b""

    # Removing bob stops sharing with him (his copy of the key stays his).
    alice.contacts_remove(BOB)
    assert alice.store.contact_by_handle(BOB).nickname == ""
    with pytest.raises(errors.UnknownContactError):
        alice.contacts_remove(BOB)
    bob_contact = bob.store.get_contact(alice.whoami().account_id)
    alice.send(BOB, "after removal")
    bob.receive()
    assert bob.store.get_contact(alice.whoami().account_id).profile_key == bob_contact.profile_key


def test_an_explicit_no_wins_over_contacts_and_is_remembered(make_client):
    alice, bob = make_client("alice"), make_client("bob")
    alice.contacts_add(BOB)
    alice.send(BOB, "one", share_profile="no")
    alice.send(BOB, "two")  # the answer is remembered
    bob.receive()
    assert key_at(bob, alice) == b""
    assert alice.store.contact_by_handle(BOB).share_profile == "no"
    with pytest.raises(errors.UsageError):
        alice.send(BOB, "three", share_profile="maybe")


def test_ask_policy_shares_only_after_a_yes(make_client):
    alice, bob, carol = make_client("alice"), make_client("bob"), make_client("carol")
    alice.set_share_policy("ask")
    alice.contacts_add(BOB)  # being in contacts does not answer the question
    assert alice.share_pending(BOB) and alice.share_pending(CAROL)
    alice.send(BOB, "no answer, no key")
    bob.receive()
    assert key_at(bob, alice) == b"" and alice.share_pending(BOB)  # still to be asked

    alice.send(BOB, "yes", share_profile="yes")
    alice.send(CAROL, "no", share_profile="no")
    assert not alice.share_pending(BOB) and not alice.share_pending(CAROL)
    alice.send(BOB, "remembered")
    bob.receive()
    carol.receive()
    assert key_at(bob, alice) == own_key(alice)
    assert key_at(carol, alice) == b""
    assert not alice.share_pending(ALICE)  # notes to self need no answer


def test_off_shares_nothing_and_rotates_the_key_on_every_own_device(make_client, relay):
    alice, bob = make_client("alice"), make_client("bob")
    alice2, _ = link(make_client, relay, alice, "alice2")
    alice.contacts_add(BOB)
    alice.send(BOB, "with my key")
    bob.receive()
    old = own_key(alice)
    assert key_at(bob, alice) == old and own_key(alice2) == old
    revision = alice.profile_revision()

    alice.set_share_policy("off")
    new = own_key(alice)
    assert len(new) == 32 and new != old and alice.profile_revision() == revision + 1
    alice2.receive()  # the other device learns the new key and the policy
    assert own_key(alice2) == new and alice2.share_policy() == "off"
    assert alice2.profile_revision() == revision + 1

    alice.send(BOB, "no key any more", share_profile="yes")  # off wins over an answer
    alice2.send(BOB, "nor from the other device")
    assert [m.text for m in bob.receive()] == ["no key any more", "nor from the other device"]
    assert key_at(bob, alice) == old  # what bob saved stays; he never sees the new key

    alice.set_share_policy("contacts")
    alice2.receive()
    assert alice2.share_policy() == "contacts" and own_key(alice2) == new
    alice.send(BOB, "the new key now")
    bob.receive()
    alice2.receive()
    assert key_at(bob, alice) == new
    assert shared_with(alice2, BOB) == new  # the sync copy told the other device


def test_key_fans_out_to_every_recipient_and_each_of_their_devices(make_client, relay):
    alice, bob, carol = make_client("alice"), make_client("bob"), make_client("carol")
    bob2, _ = link(make_client, relay, bob, "bob2")
    carol2, _ = link(make_client, relay, carol, "carol2")
    alice2, _ = link(make_client, relay, alice, "alice2")
    alice.contacts_add(BOB)
    alice.contacts_add(CAROL)
    for handle in (BOB, CAROL):  # a conversation with both: every message goes to each
        alice.send(handle, "to both of you")
    for device in (bob, bob2, carol, carol2):
        assert [m.text for m in device.receive()] == ["to both of you"]
        assert key_at(device, alice) == own_key(alice)
    alice2.receive()
    assert shared_with(alice2, BOB) == own_key(alice) and shared_with(alice2, CAROL) == own_key(alice)


def test_a_contacts_nickname_and_key_survive_a_device_list_refresh(make_client, relay):
    alice, bob = make_client("alice"), make_client("bob")
    alice.contacts_add(BOB, nickname="B")
    bob.contacts_add(ALICE)
    bob.send(ALICE, "hello with my key")
    alice.receive()
    bob_key = key_at(alice, bob)
    assert len(bob_key) == 32
    link(make_client, relay, bob, "bob2")  # alice refetches bob's list on the next send (409)
    alice.send(BOB, "to both of bob's devices")
    contact = alice.store.contact_by_handle(BOB)
    assert contact.nickname == "B" and contact.in_contacts and contact.profile_key == bob_key


def test_contacts_add_checks_its_input(make_client):
    alice = make_client("alice")
    with pytest.raises(errors.UsageError):
        alice.contacts_add(ALICE)
    with pytest.raises(errors.UsageError):
        alice.contacts_add(BOB, nickname="x" * 65)
    with pytest.raises(errors.UsageError):
        alice.contacts_add(BOB, nickname="bad\nname")
    with pytest.raises(errors.RelayRefusedError):
        alice.contacts_add("nobody@example.com")  # not registered: nothing to pin
    assert alice.store.contact_by_handle("nobody@example.com") is None


def test_an_older_profile_message_from_an_own_device_changes_nothing(make_client, relay):
    from imsg.protocol.content import KIND_PROFILE, Content, ProfileShare

    alice = make_client("alice")
    alice.set_share_policy("ask")
    alice.set_share_policy("contacts")
    key, revision = own_key(alice), alice.profile_revision()
    for rev in (revision, revision - 1):  # a replay of the last one, and an older one
        stale = Content("ab" * 16, 1, KIND_PROFILE, ALICE, ALICE, profile=ProfileShare(b"\x07" * 32, rev, "off"))
        with alice.store.transaction():
            alice._own_profile_update(alice.store.load_account(), stale)
        assert own_key(alice) == key and alice.share_policy() == "contacts" and alice.profile_revision() == revision


def test_a_linked_device_gets_the_address_book_and_sharing_state(make_client, relay):
    alice = make_client("alice")
    make_client("bob")
    alice.contacts_add(BOB, nickname="Bobby")
    alice.set_share_policy("ask")
    alice.send(BOB, "hi", share_profile="yes")
    alice2, _ = link(make_client, relay, alice, "alice2")
    contact = alice2.store.contact_by_handle(BOB)
    assert contact.in_contacts and contact.nickname == "Bobby" and contact.share_profile == "yes"
    assert contact.shared_profile_key == own_key(alice) == own_key(alice2)
    assert alice2.share_policy() == "ask" and alice2.profile_revision() == alice.profile_revision()
