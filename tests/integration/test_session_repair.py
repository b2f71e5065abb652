"""Session repair (docs/PROTOCOL.md §5b): a message that does not decrypt is not lost for
good. The receiver sends the sender device a retry receipt, end to end; the sender starts a
new session with that device and re-sends the message, once."""

from __future__ import annotations

from imsg.client.repair import Repair
from imsg.protocol.content import KIND_RETRY, Content
from imsg.protocol.session import Address, SessionRecord


def texts(messages) -> list[str]:
    return [m.text for m in messages]


def test_a_receiver_that_lost_its_session_gets_the_message_re_sent(make_client):
    alice, bob = make_client("alice"), make_client("bob")
    alice.send("bob@example.com", "hello")
    assert texts(bob.receive()) == ["hello"]
    bob.send("alice@example.com", "hi")
    assert texts(alice.receive()) == ["hi"]
    alice_id = alice.whoami().account_id
    bob.store.delete_session(Address(alice_id, 1))  # bob's state for alice's device is gone

    sent = alice.send("bob@example.com", "are you there?")
    assert bob.receive() == []  # it does not decrypt: bob asks alice's device to re-send
    assert [p.code for p in bob.problems] == ["rejected"]
    assert alice.receive() == []  # the receipt is no message; alice re-sends over a new session
    got = bob.receive()
    assert texts(got) == ["are you there?"] and got[0].id == sent.id
    # and the conversation goes on both ways
    alice.send("bob@example.com", "good")
    assert texts(bob.receive()) == ["good"]
    bob.send("alice@example.com", "yes")
    assert texts(alice.receive()) == ["yes"]
    # a second receipt for the same message is not honoured (one re-send per message)
    assert alice.problems == []


def test_a_first_message_on_a_prekey_the_receiver_does_not_hold_is_re_sent(make_client):
    """As when the relay swaps a one-time prekey in a bundle: the first message fails, and
    before this every later message of that sender was lost until the receiver replied."""
    alice, bob = make_client("alice"), make_client("bob")
    bob_id = bob.whoami().account_id
    alice.send("bob@example.com", "first")
    pending = SessionRecord.decode(alice.store.load_session(Address(bob_id, 1))).current.pending
    bob.store.remove_one_time_prekey(pending.one_time_prekey_id)  # bob cannot use that bundle
    alice.send("bob@example.com", "second")
    assert bob.receive() == []  # both fail: the session never started on bob's side
    assert [p.code for p in bob.problems] == ["duplicate", "duplicate"]
    assert alice.receive() == []  # one receipt per message; one new session for both
    assert sorted(texts(bob.receive())) == ["first", "second"]
    alice.send("bob@example.com", "third")
    assert texts(bob.receive()) == ["third"]
    assert alice.problems == []


def test_a_receipt_for_a_message_we_never_sent_is_refused(make_client):
    alice, bob = make_client("alice"), make_client("bob")
    alice.send("bob@example.com", "hello")
    bob.receive()
    receipt = Content(
        "ab" * 16, 0, KIND_RETRY, "bob@example.com", "alice@example.com", retry_id="cd" * 16, retry_device=1
    )
    repair = Repair(alice._ctx, alice._delivery)
    alice_account = alice._ctx.account()
    bob_contact = alice.store.get_contact(bob.whoami().account_id)
    assert not repair.honour(alice_account, bob_contact, receipt, 1)
    assert [p.code for p in alice.problems] == ["repair_refused"]
    # a message bob sent (direction "in" at alice) is not alice's to re-send either
    bob.send("alice@example.com", "from bob")
    (got,) = alice.receive()
    assert not repair.honour(alice_account, bob_contact, _retry(got.id), 1)
    # one of alice's own messages is re-sent once, and only once
    mine = alice.send("bob@example.com", "mine")
    bob.receive()
    assert repair.honour(alice_account, bob_contact, _retry(mine.id), 1)
    assert not repair.honour(alice_account, bob_contact, _retry(mine.id), 1)
    assert texts(bob.receive()) == []  # bob had it: the copy is dropped by its id


def _retry(message_id: str) -> Content:
    return Content(
        "ef" * 16, 0, KIND_RETRY, "bob@example.com", "alice@example.com", retry_id=message_id, retry_device=1
    )
