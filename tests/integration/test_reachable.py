"""Reachable at several handles, through real relays on loopback (issue 5): verification
with the codes a `file:` verifier wrote, handles that agree on every device of the
account, start-from and `send(from_=...)`, what the recipient sees (`from`, `to`), the
private lookup, receive off, and a sender claiming a handle it does not hold."""

from __future__ import annotations

import pytest
from device_helpers import link_device

from imsg import errors
from imsg.client import Client

ALICE, BOB = "alice@example.com", "bob@example.com"
ALICE_PHONE = "+15551234567"


def code_for(codes_path, handle: str) -> str:
    return [line.split()[1] for line in codes_path.read_text().splitlines() if line.split()[0] == handle][-1]


@pytest.fixture
def vrelay(tmp_path, relay_factory):
    """A relay that verifies handles by writing codes to a file."""
    codes = tmp_path / "codes.txt"
    r = relay_factory(verifier=f"file:{codes}")
    r.codes = codes
    return r


@pytest.fixture
def vclient(tmp_path, vrelay):
    opened: list[Client] = []

    def make(name: str, handle: str | None = None, *, verify: bool = True) -> Client:
        c = Client.open(tmp_path / "homes" / name, relay=vrelay.url)
        opened.append(c)
        handle = handle or f"{name}@example.com"
        c.init(handle, name=name.capitalize())
        if verify:
            c.reachable_verify(handle, code_for(vrelay.codes, handle))
        return c

    yield make
    for c in opened:
        c.close()


def link(relay_url: str, existing: Client, home) -> Client:
    link_device(relay_url, existing, home, "second")
    return Client.open(home, relay=relay_url)


def rows(client: Client) -> list[tuple[str, str, bool, bool]]:
    return [(h.handle, h.state, h.receiving, h.start_from) for h in client.reachable_list()]


def test_init_is_pending_until_verified_and_only_then_reachable(vrelay, vclient):
    bob = vclient("bob")
    alice = vclient("alice", verify=False)
    assert rows(alice) == [(ALICE, "pending", True, False)]
    assert [(r.handle, r.reachable) for r in bob.lookup([ALICE])] == [(ALICE, False)]
    with pytest.raises(errors.RelayRefusedError) as exc:
        alice.reachable_verify(ALICE, "000000" if code_for(vrelay.codes, ALICE) != "000000" else "111111")
    assert exc.value.relay_code == "wrong_code" and exc.value.exit_code == 5
    alice.reachable_verify(ALICE, code_for(vrelay.codes, ALICE))
    assert rows(alice) == [(ALICE, "verified", True, True)]
    [r] = bob.lookup(["Alice@Example.COM"])  # canonicalised before the lookup
    assert (r.handle, r.reachable, r.verified) == (ALICE, True, True)


def test_several_handles_agree_on_every_device_and_choose_the_sender(tmp_path, vrelay, vclient):
    alice, bob = vclient("alice"), vclient("bob")
    alice.reachable_add("+1 (555) 123-4567")
    alice.reachable_verify(ALICE_PHONE, code_for(vrelay.codes, ALICE_PHONE))
    laptop = link(vrelay.url, alice, tmp_path / "homes" / "alice-laptop")
    try:
        assert rows(laptop) == rows(alice) == [(ALICE, "verified", True, True), (ALICE_PHONE, "verified", True, False)]
        laptop.reachable_start_from(ALICE_PHONE)  # chosen on one device, seen on the other
        assert rows(alice) == [(ALICE, "verified", True, False), (ALICE_PHONE, "verified", True, True)]
        alice.send(BOB, "from my phone number")
        alice.send(BOB, "from my address, once", from_=ALICE)
        got = bob.receive()
        # one conversation (one account); bob first met alice at her number
        assert [(m.text, m.sender, m.to, m.peer) for m in got] == [
            ("from my phone number", ALICE_PHONE, BOB, ALICE_PHONE),
            ("from my address, once", ALICE, BOB, ALICE_PHONE),
        ]
        assert bob.problems == []
        # bob writes to alice's number: she sees which of her handles he wrote to
        bob.send(ALICE_PHONE, "to your number")
        [m] = [m for m in alice.receive() if m.direction == "in"]
        assert (m.sender, m.to, m.text) == (BOB, ALICE_PHONE, "to your number")
        assert [m.to for m in laptop.receive() if m.direction == "in"] == [ALICE_PHONE]
        # a handle that is not ours, or not yet verified, cannot be sent from
        with pytest.raises(errors.LocalStateError):
            alice.send(BOB, "x", from_="carol@example.com")
        alice.reachable_add("alice@work.example")
        with pytest.raises(errors.LocalStateError):
            alice.send(BOB, "x", from_="alice@work.example")
        assert rows(laptop)[-1] == ("alice@work.example", "pending", True, False)
        laptop.reachable_remove("alice@work.example")
        assert [h for h, *_ in rows(alice)] == [ALICE, ALICE_PHONE]
    finally:
        laptop.close()


def test_receive_off_makes_a_handle_unreachable_without_removing_it(vrelay, vclient):
    alice, bob = vclient("alice"), vclient("bob")
    alice.reachable_add(ALICE_PHONE)
    alice.reachable_verify(ALICE_PHONE, code_for(vrelay.codes, ALICE_PHONE))
    assert [r.reachable for r in bob.lookup([ALICE, ALICE_PHONE])] == [True, True]
    alice.reachable_receive(ALICE_PHONE, on=False)
    assert [r.reachable for r in bob.lookup([ALICE, ALICE_PHONE])] == [True, False]
    with pytest.raises(errors.NotRegisteredError):
        bob.send(ALICE_PHONE, "hello?")
    assert (ALICE_PHONE, "verified", False, False) in rows(alice)
    alice.reachable_receive(ALICE_PHONE, on=True)
    bob.send(ALICE_PHONE, "hello again")
    assert [m.text for m in alice.receive()] == ["hello again"]


def test_the_only_usable_handle_cannot_be_removed(vclient):
    alice = vclient("alice")
    with pytest.raises(errors.LocalStateError) as exc:
        alice.reachable_remove(ALICE)
    assert exc.value.exit_code == 3
    with pytest.raises(errors.InvalidHandleError):
        alice.reachable_add("not a handle")


def test_a_claimed_sender_handle_is_checked_by_private_lookup(vclient):
    """A (modified) client writes as a handle its account does not hold: the recipient
    shows the sender's known handle and says so; a first message so forged is rejected."""
    alice, bob, carol = vclient("alice"), vclient("bob"), vclient("carol")
    alice.send(BOB, "hi")
    bob.receive()
    contact, devices = alice._resolve(BOB)
    account = alice._account()
    alice._send_to(account, contact, devices, "a" * 32, "it is carol here", sender_handle="carol@example.com")
    [m] = bob.receive()
    assert (m.sender, m.text) == (ALICE, "it is carol here")
    assert [p.code for p in bob.problems] == ["unverified_from"]
    # first contact: mallory-ish carol claims alice's address -> rejected outright
    contact, devices = carol._resolve(BOB)
    carol._send_to(carol._account(), contact, devices, "b" * 32, "hello, it's alice", sender_handle=ALICE)
    bob.problems.clear()
    assert bob.receive() == []
    assert [p.code for p in bob.problems] == ["rejected"]


def test_unverified_claims_are_marked_for_contacts(make_client):
    alice, bob = make_client("alice"), make_client("bob")  # relay without verifier
    assert [(h.handle, h.state) for h in alice.reachable_list()] == [(ALICE, "unverified")]
    alice.send(BOB, "hi")
    bob.receive()
    [c] = bob.contacts()
    assert (c.handle, c.handle_verified) == (ALICE, False)
    [r] = bob.lookup([ALICE])
    assert (r.reachable, r.verified) == (True, False)


def test_lookups_are_rate_limited_per_account(tmp_path, relay_factory):
    r = relay_factory(discovery_burst=3, discovery_rate=0.001)
    with Client.open(tmp_path / "a", relay=r.url) as a:
        a.init(ALICE)
        a.lookup(["+15550000001", "+15550000002"])
        with pytest.raises(errors.RelayRefusedError) as exc:
            a.lookup(["+15550000003", "+15550000004"])
        assert exc.value.status == 429


def test_a_first_message_is_kept_when_the_lookup_budget_is_spent(tmp_path, relay_factory):
    """The sender check needs a lookup; out of budget (429), the message is still stored and
    acked (issue 12 row 7: a drained budget must not stop receive), its sender shown as
    unchecked, and the check completes on a later receive."""
    r = relay_factory(discovery_burst=3, discovery_rate=0.001)
    with Client.open(tmp_path / "a", relay=r.url) as a, Client.open(tmp_path / "b", relay=r.url) as b:
        a.init(ALICE)
        b.init(BOB)
        sent = a.send(BOB, "hi")
        b.lookup(["+15550000001", "+15550000002", "+15550000003"])  # b spends its budget
        assert [(m.id, m.text) for m in b.receive()] == [(sent.id, "hi")]
        assert [(p.message_id, p.code) for p in b.problems] == [(sent.id, "from_unchecked")]
        b.problems.clear()
        with r.db() as db:
            assert db.execute("SELECT COUNT(*) FROM envelopes").fetchone()[0] == 0  # acked
        assert b.receive() == [] and b.problems == []  # still refused: still pending, quietly
        r.app.state.relay.limits.discovery._events.clear()  # the budget refills
        assert b.receive() == []
        assert [(p.message_id, p.code) for p in b.problems] == [(sent.id, "from_checked")]
        assert [(c.handle, c.account_id) for c in b.contacts()] == [(ALICE, a.whoami().account_id)]
