"""Safety numbers and key changes (issue 3; SECURITY-TESTS 5 and the threat model's
"identity change": pinned keys raise "safety number changed" and block sending).

The key change is made the way a malicious (or compromised) relay would make it: its
directory maps bob's handle to another account, mallory's, by re-pointing the blinded rows
of the relay's `handles` table (the operator holds the discovery key, so it can re-seal
their records).
"""

from __future__ import annotations

import pytest
from device_helpers import link_device

from imsg import errors
from imsg.client import Client
from imsg.protocol.identity import safety_number

ALICE, BOB = "alice@example.com", "bob@example.com"


def texts(messages) -> list[str]:
    return [m.text for m in messages]


def link(relay, existing: Client, home) -> Client:
    link_device(relay.url, existing, home, "linked")
    return Client.open(home, relay=relay.url)


def map_handle_to(relay, handle_owner: str, new_owner: str) -> None:
    """The relay's directory now answers `handle_owner`'s handle with `new_owner`'s account
    (and the other way round)."""
    from handle_helpers import swap_handle_owners

    with relay.db() as db:
        swap_handle_owners(
            relay.data_dir,
            db,
            handle_owner,
            new_owner,
            [f"{n}@example.com" for n in ("alice", "bob", "mallory", "carol")],
        )


def recheck(client: Client, hours: int = 37) -> None:
    """Let the background re-verification run: move the client's clock past every
    contact's next check (12-36 h after the last one) and receive. Twice, so that contacts
    this home never scheduled (a linked device's) get a time and then reach it."""
    for _ in range(2):
        now = client._now()
        client._now = lambda t=now + hours * 3600 * 1000: t
        client.receive()


def envelope_counts(relay) -> dict[str, int]:
    with relay.db() as db:
        return dict(db.execute("SELECT account_id, COUNT(*) FROM envelopes GROUP BY account_id").fetchall())


def contact_rows(client: Client) -> list[tuple[str, str, str, int]]:
    return sorted((c.handle, c.account_id, c.state, c.held) for c in client.contacts())


# --- safety numbers ---


def test_safety_number_same_on_both_sides_and_all_devices_and_unchanged_by_new_devices(make_client, relay, tmp_path):
    alice, bob = make_client("alice"), make_client("bob")
    alice.send(BOB, "hi")
    bob.receive()
    a_key, b_key = alice.store.load_account().account_public, bob.store.load_account().account_public
    number = alice.verify(BOB).safety_number
    assert number == bob.verify(ALICE).safety_number == safety_number(a_key, b_key) == safety_number(b_key, a_key)
    assert len(number.replace(" ", "")) == 60 and number.replace(" ", "").isdigit()
    v = alice.verify(BOB)
    assert (v.verified, v.changed) == (False, False)
    assert alice.verify(BOB, mark=True).verified
    assert [(c.handle, c.state, c.verified) for c in alice.contacts()] == [(BOB, "verified", True)]

    # Bob links a device (same account key): same number, no re-verification, no hold.
    bob2 = link(relay, bob, tmp_path / "homes" / "bob2")
    alice2 = link(relay, alice, tmp_path / "homes" / "alice2")
    try:
        sent = alice.send(BOB, "to both of bob's devices")
        assert sent.devices == 2
        assert [p.code for p in alice.problems] in ([], ["devices_changed"])  # shown, not blocking
        row = [c for c in alice.contacts() if c.handle == BOB]
        assert [(c.state, c.verified, c.devices, c.held) for c in row] == [("verified", True, 2, 0)]
        for c, peer in ((alice, BOB), (alice2, BOB), (bob, ALICE), (bob2, ALICE)):
            assert c.verify(peer).safety_number == number
        assert alice2.verify(BOB).verified  # the mark came over with the contacts
        assert texts(bob2.receive()) == ["to both of bob's devices"]
        # Removing a device does not change it either.
        bob.device_remove(2)
        alice.send(BOB, "after removal")
        assert alice.verify(BOB).safety_number == number and alice.verify(BOB).verified
    finally:
        bob2.close()
        alice2.close()


def test_safety_number_ignores_relay_chosen_identifiers(make_client, relay):
    """CVE-2022-39250: only the two type-tagged account keys count — not handles, account
    ids, device ids or device keys (all of which the relay chooses or serves)."""
    alice, bob, carol = make_client("alice"), make_client("bob"), make_client("carol")
    alice.send(BOB, "x")
    alice.send("carol@example.com", "y")
    a, b, c = (x.store.load_account().account_public for x in (alice, bob, carol))
    assert alice.verify(BOB).safety_number == safety_number(a, b)
    assert alice.verify("carol@example.com").safety_number == safety_number(a, c) != safety_number(a, b)
    # A key passed where another kind of key is expected gives another number.
    x25519_ik = alice.store.load_account().identity_private
    assert safety_number(a, b) != safety_number(a, x25519_ik)


# --- key change on send ---


@pytest.fixture
def changed(make_client, relay):
    """alice has talked to bob (pinned, verified); then the relay maps bob's handle to mallory."""
    alice, bob, mallory = make_client("alice"), make_client("bob"), make_client("mallory")
    alice.send(BOB, "hello bob")
    assert texts(bob.receive()) == ["hello bob"]
    alice.verify(BOB, mark=True)
    ids = {n: c.whoami().account_id for n, c in (("alice", alice), ("bob", bob), ("mallory", mallory))}
    map_handle_to(relay, ids["bob"], ids["mallory"])
    assert alice.lookup([BOB])[0].account_id == ids["mallory"]
    # Sends never look bob up again (issue 12 C3): the change is noticed by the background
    # re-verification that receive runs once bob's check is due.
    recheck(alice)
    assert [p.code for p in alice.problems] == ["identity_changed"]
    alice.problems.clear()
    return alice, bob, mallory, ids


def test_send_after_key_change_is_held(changed, relay):
    alice, bob, mallory, ids = changed
    with pytest.raises(errors.IdentityChangedError) as exc:
        alice.send(BOB, "held secret")
    err = exc.value
    assert err.exit_code == 6 and err.code == "identity_changed"
    held_id = err.details["message_id"]
    assert len(held_id) == 32 and err.details["handle"] == BOB
    assert envelope_counts(relay) == {}  # nothing delivered to anyone
    assert mallory.receive() == [] and bob.receive() == []
    assert alice.store.outgoing() == []
    rows = {(c.account_id, c.state, c.held) for c in alice.contacts() if c.handle == BOB}
    assert (ids["mallory"], "changed", 1) in rows
    v = alice.verify(BOB)  # the number of the new key, flagged
    assert v.changed and not v.verified
    assert v.safety_number == safety_number(
        alice.store.load_account().account_public, mallory.store.load_account().account_public
    )
    # Still held on the next try: a second message is held too, nothing is sent.
    with pytest.raises(errors.IdentityChangedError):
        alice.send(BOB, "second held")
    assert envelope_counts(relay) == {}
    assert {c.held for c in alice.contacts() if c.handle == BOB} == {2}


def test_trust_releases_held_messages_exactly_once(changed, relay):
    alice, bob, mallory, ids = changed
    held = []
    for text in ("held one", "held two"):
        with pytest.raises(errors.IdentityChangedError) as exc:
            alice.send(BOB, text)
        held.append(exc.value.details["message_id"])
    sent = alice.trust(BOB)
    assert [s.id for s in sent] == held and all(s.devices == 1 for s in sent)
    assert envelope_counts(relay) == {ids["mallory"]: 2}
    got = mallory.receive()
    assert [(m.id, m.text) for m in got] == list(zip(held, ["held one", "held two"], strict=True))
    assert alice.trust(BOB) == []  # nothing left to release
    assert mallory.receive() == [] and bob.receive() == []
    assert [(c.account_id, c.state, c.held) for c in alice.contacts() if c.handle == BOB] == [
        (ids["mallory"], "unverified", 0)
    ]
    # Afterwards sends go to the new identity without a hold.
    alice.send(BOB, "normal again")
    assert texts(mallory.receive()) == ["normal again"]


def test_send_on_key_change_accept(changed, relay):
    alice, bob, mallory, ids = changed
    sent = alice.send(BOB, "accepting the new key", on_key_change="accept")
    assert envelope_counts(relay) == {ids["mallory"]: 1}
    assert [(m.id, m.text) for m in mallory.receive()] == [(sent.id, "accepting the new key")]
    assert [(c.account_id, c.state) for c in alice.contacts() if c.handle == BOB] == [(ids["mallory"], "unverified")]
    # The earlier conversation stays readable under the handle.
    assert texts(alice.history(BOB)) == ["hello bob", "accepting the new key"]
    with pytest.raises(errors.UsageError):
        alice.send(BOB, "x", on_key_change="ignore")


def test_verify_mark_after_change_records_the_new_key(changed, relay):
    alice, bob, mallory, ids = changed
    with pytest.raises(errors.IdentityChangedError) as exc:
        alice.send(BOB, "held until verified")
    v = alice.verify(BOB, mark=True)
    assert v.verified and not v.changed
    assert [(c.account_id, c.state, c.verified) for c in alice.contacts() if c.handle == BOB] == [
        (ids["mallory"], "verified", True)
    ]
    assert alice.verify(BOB).safety_number == v.safety_number
    # Marking accepts the key; held messages still wait for an explicit trust.
    assert envelope_counts(relay) == {}
    sent = alice.trust(BOB)
    assert [s.id for s in sent] == [exc.value.details["message_id"]]
    assert texts(mallory.receive()) == ["held until verified"]


def test_key_change_on_linked_devices_too(changed, relay, tmp_path):
    """alice's second device (linked before the change) holds bob's old key and holds too."""
    alice, bob, mallory, ids = changed
    map_handle_to(relay, ids["mallory"], ids["bob"])  # back to bob while alice links
    alice2 = link(relay, alice, tmp_path / "homes" / "alice2")
    try:
        map_handle_to(relay, ids["bob"], ids["mallory"])
        recheck(alice2)
        with pytest.raises(errors.IdentityChangedError):
            alice2.send(BOB, "from the second device")
        assert envelope_counts(relay) == {}
    finally:
        alice2.close()


# --- key change on receive ---


def test_message_from_new_key_claiming_the_handle_is_stored_but_reported(changed, relay):
    alice, bob, mallory, ids = changed
    from dataclasses import replace

    account = mallory.store.load_account()
    with mallory.store.transaction():
        mallory.store.save_account(replace(account, handle=BOB))  # mallory writes as bob
    sent = mallory.send(ALICE, "it's me, bob, new phone")
    got = alice.receive()
    assert [(m.id, m.text, m.sender) for m in got] == [(sent.id, "it's me, bob, new phone", BOB)]
    assert [(p.message_id, p.code) for p in alice.problems] == [(sent.id, "identity_changed")]
    assert "safety number changed" in alice.problems[0].message
    alice.problems.clear()
    rows = {(c.account_id, c.state) for c in alice.contacts() if c.handle == BOB}
    assert (ids["mallory"], "changed") in rows
    # Sending to bob is still held: receiving did not silently accept the new key.
    with pytest.raises(errors.IdentityChangedError):
        alice.send(BOB, "are you really bob?")
    assert envelope_counts(relay) == {}


def test_message_claiming_a_handle_the_sender_does_not_hold_is_rejected(make_client, relay):
    """Without the relay's help, mallory cannot claim bob's handle at all."""
    from dataclasses import replace

    alice, bob, mallory = make_client("alice"), make_client("bob"), make_client("mallory")
    alice.send(BOB, "hi")
    account = mallory.store.load_account()
    with mallory.store.transaction():
        mallory.store.save_account(replace(account, handle=BOB))
    sent = mallory.send(ALICE, "bob here (not)")
    assert alice.receive() == []
    assert [(p.message_id, p.code) for p in alice.problems] == [(sent.id, "rejected")]
    assert not alice.store.has_message(sent.id)
    assert [(c.handle, c.account_id) for c in alice.contacts()] == [(BOB, bob.whoami().account_id)]


def test_message_from_a_replaced_key_is_reported(changed, relay):
    """alice accepted mallory's key for bob's handle; the real bob (the old key, now
    replaced) writes again: it must not pass silently as bob."""
    alice, bob, mallory, ids = changed
    alice.send(BOB, "to the new key", on_key_change="accept")
    assert [(c.account_id, c.state) for c in alice.contacts() if c.handle == BOB] == [(ids["mallory"], "unverified")]
    sent = bob.send(ALICE, "it's the old bob")
    got = alice.receive()
    assert [(m.id, m.text) for m in got] == [(sent.id, "it's the old bob")]  # stored, but reported
    assert [(p.message_id, p.code) for p in alice.problems if p.code != "devices_changed"] == [
        (sent.id, "identity_changed")
    ]
