"""Two or three `Client`s talking through a real relay (uvicorn in a thread, loopback)."""

from __future__ import annotations

import threading
import time

import pytest

from imsg import errors
from imsg.protocol import consts
from imsg.relay_client import RelayClient


def texts(messages) -> list[str]:
    return [m.text for m in messages]


def test_init_send_receive_both_ways(make_client):
    alice, bob = make_client("alice"), make_client("bob")
    me = alice.whoami()
    assert me.handle == "alice@example.com" and me.device_id == 1 and me.devices == 1
    assert len(me.account_id) == 32

    sent = alice.send("bob@example.com", "hello bob")
    assert sent.to == "bob@example.com" and sent.devices == 1 and len(sent.id) == 32

    got = bob.receive()
    assert len(got) == 1
    m = got[0]
    assert (m.id, m.sender, m.to, m.text, m.direction, m.peer) == (
        sent.id,
        "alice@example.com",
        "bob@example.com",
        "hello bob",
        "in",
        "alice@example.com",
    )
    assert m.sent_at == sent.sent_at
    assert bob.problems == []

    bob.send("alice@example.com", "hi alice")
    back = alice.receive()
    assert texts(back) == ["hi alice"] and back[0].sender == "bob@example.com"
    # Nothing left over on either side.
    assert bob.receive() == [] and alice.receive() == []


def test_many_messages_in_order_and_interleaved(make_client):
    alice, bob = make_client("alice"), make_client("bob")
    for i in range(30):
        alice.send("bob@example.com", f"a{i}")
    got = bob.receive()  # out of order w.r.t. the sends: all arrive in one fetch
    assert texts(got) == [f"a{i}" for i in range(30)]
    # Ping-pong: a DH ratchet step every message.
    for i in range(8):
        bob.send("alice@example.com", f"b{i}")
        assert texts(alice.receive()) == [f"b{i}"]
        alice.send("bob@example.com", f"c{i}")
        assert texts(bob.receive()) == [f"c{i}"]
    # Both sides send before either receives (crossing chains).
    alice.send("bob@example.com", "x1")
    bob.send("alice@example.com", "y1")
    alice.send("bob@example.com", "x2")
    bob.send("alice@example.com", "y2")
    assert texts(bob.receive()) == ["x1", "x2"]
    assert texts(alice.receive()) == ["y1", "y2"]
    assert alice.problems == [] and bob.problems == []


def test_three_parties(make_client):
    alice, bob, carol = make_client("alice"), make_client("bob"), make_client("carol")
    alice.send("bob@example.com", "to bob")
    alice.send("carol@example.com", "to carol")
    carol.send("bob@example.com", "carol to bob")
    got = bob.receive()
    assert sorted((m.sender, m.text) for m in got) == [
        ("alice@example.com", "to bob"),
        ("carol@example.com", "carol to bob"),
    ]
    assert [(m.sender, m.text) for m in carol.receive()] == [("alice@example.com", "to carol")]
    bob.send("carol@example.com", "bob to carol")
    assert texts(carol.receive()) == ["bob to carol"]


def _send_from_thread(home, relay_url, to, text, delay=0.3) -> tuple[threading.Thread, dict]:
    """Send from another thread, with its own Client on the sender's home (a Client, like
    its SQLite connection, belongs to the thread that opened it)."""
    from imsg.client import Client

    out: dict = {}

    def run():
        time.sleep(delay)
        with Client.open(home, relay=relay_url) as c:
            c.send(to, text)
            out["landed"] = time.monotonic()

    th = threading.Thread(target=run)
    th.start()
    return th, out


def test_long_poll_returns_promptly_when_a_message_lands(make_client, relay, tmp_path):
    alice, bob = make_client("alice"), make_client("bob")
    alice.send("bob@example.com", "first")  # the session exists, so the later send is fast
    assert texts(bob.receive()) == ["first"]
    alice.close()

    th, out = _send_from_thread(tmp_path / "homes" / "alice", relay.url, "bob@example.com", "ping")
    t0 = time.monotonic()
    got = bob.receive(wait=20)
    returned = time.monotonic()
    th.join(10)
    assert texts(got) == ["ping"]
    assert returned - t0 >= 0.25  # it really waited for the send
    # Woken by the push (the wait was 20 s); the margin covers decrypt, store and ack on a busy machine.
    assert returned - out["landed"] < 5.0, "long poll did not wake up when the envelope landed"


def test_watch_yields_a_message_sent_from_another_thread(make_client, relay, tmp_path):
    make_client("alice").close()
    bob = make_client("bob")
    th, out = _send_from_thread(tmp_path / "homes" / "alice", relay.url, "bob@example.com", "watched")
    seen = []
    for m in bob.watch(wait=10):
        seen.append(m)
        break
    returned = time.monotonic()
    th.join(10)
    assert texts(seen) == ["watched"] and seen[0].sender == "alice@example.com"
    assert returned - out["landed"] < 5.0  # woken by the push, not by the wait running out


def test_history_and_chats(make_client):
    alice, bob, carol = make_client("alice"), make_client("bob"), make_client("carol")
    alice.send("bob@example.com", "one")
    alice.send("bob@example.com", "two")
    bob.receive()
    bob.send("alice@example.com", "three")
    alice.receive()
    carol.send("alice@example.com", "from carol")
    alice.receive()

    hist = alice.history("bob@example.com")
    assert [(m.direction, m.text) for m in hist] == [("out", "one"), ("out", "two"), ("in", "three")]
    assert all(m.peer == "bob@example.com" for m in hist)
    assert [m.text for m in alice.history("bob@example.com", limit=2)] == ["two", "three"]
    # The same conversation seen from bob's side.
    assert [(m.direction, m.text) for m in bob.history("alice@example.com")] == [
        ("in", "one"),
        ("in", "two"),
        ("out", "three"),
    ]

    chats = alice.chats()
    assert [c.peer_handle for c in chats] == ["carol@example.com", "bob@example.com"]  # most recent first
    by_peer = {c.peer_handle: c for c in chats}
    assert by_peer["bob@example.com"].messages == 3 and by_peer["bob@example.com"].last_text == "three"
    assert by_peer["carol@example.com"].messages == 1

    with pytest.raises(errors.UnknownContactError):
        alice.history("nobody@example.com")


def test_handle_canonicalisation(make_client):
    alice, bob = make_client("alice"), make_client("bob", "Bob@Example.COM")
    assert bob.whoami().handle == "bob@example.com"
    alice.send("BOB@example.com", "case one")
    alice.send("  bob@EXAMPLE.com ", "case two")
    got = bob.receive()
    assert texts(got) == ["case one", "case two"]
    assert {m.to for m in got} == {"bob@example.com"}
    assert texts(alice.history("Bob@Example.Com")) == ["case one", "case two"]
    # Phone numbers: spaces, dashes and a 00 prefix all mean the same E.164 number.
    phone = make_client("phone", "+1 (555) 123-4567")
    assert phone.whoami().handle == "+15551234567"
    alice.send("0015551234567", "by phone")
    assert texts(phone.receive()) == ["by phone"]


def test_unknown_recipient_and_invalid_handle(make_client):
    alice = make_client("alice")
    with pytest.raises(errors.NotRegisteredError) as exc:
        alice.send("nobody@example.com", "hello?")
    assert exc.value.exit_code == 5
    with pytest.raises(errors.InvalidHandleError):
        alice.send("not a handle", "x")
    # Nothing was stored or queued for the failed sends.
    assert alice.store.outgoing() == []
    assert alice.chats() == []


def test_duplicate_registration_is_refused(make_client, tmp_path):
    alice = make_client("alice")
    with pytest.raises(errors.AccountExistsError):
        alice.init("other@example.com")
    impostor = make_client("impostor", init=False)
    with pytest.raises(errors.RelayRefusedError) as exc:
        impostor.init("ALICE@example.com")
    assert exc.value.relay_code == "handle_taken" and exc.value.exit_code == 5
    # The refused home holds no account, and can still register a free handle.
    with pytest.raises(errors.NoAccountError):
        impostor.whoami()
    assert impostor.init("impostor@example.com").handle == "impostor@example.com"


def test_redelivery_after_a_fetch_without_ack(make_client):
    """A client that crashed after fetching (before acking) sees the envelope again; it is
    stored exactly once."""
    alice, bob = make_client("alice"), make_client("bob")
    sent = alice.send("bob@example.com", "only once")
    account = bob.store.load_account()
    with RelayClient(bob.relay().base_url, account.token) as raw:
        envelopes, _ = raw.fetch()
        assert [e.message_id for e in envelopes] == [sent.id]
        # "crash": no ack. The relay redelivers.
        again, _ = raw.fetch()
        assert [e.message_id for e in again] == [sent.id]
    got = bob.receive()
    assert texts(got) == ["only once"]
    assert bob.receive() == []
    assert len(bob.history("alice@example.com")) == 1

    # Now the other crash: the message was stored but the ack never reached the relay.
    sent2 = alice.send("bob@example.com", "stored, not acked")
    real_ack = bob.relay().ack
    calls = []
    bob.relay().ack = lambda ids: calls.append(ids)  # the ack is lost
    assert texts(bob.receive()) == ["stored, not acked"]
    assert calls == [[sent2.id]]
    bob.relay().ack = real_ack
    assert bob.receive() == []  # redelivered, recognised, acked, not shown twice
    assert bob.problems == []
    assert texts(bob.history("alice@example.com")) == ["only once", "stored, not acked"]
    with RelayClient(bob.relay().base_url, account.token) as raw:
        assert raw.fetch()[0] == []


def test_client_restart_keeps_the_session(make_client):
    alice, bob = make_client("alice"), make_client("bob")
    alice.send("bob@example.com", "before restart")
    assert texts(bob.receive()) == ["before restart"]
    alice.close()
    bob.close()
    alice, bob = make_client("alice"), make_client("bob")  # same homes, reopened
    assert alice.whoami().handle == "alice@example.com"
    alice.send("bob@example.com", "after restart")
    bob.send("alice@example.com", "reply after restart")
    assert texts(bob.receive()) == ["after restart"]
    assert texts(alice.receive()) == ["reply after restart"]
    assert alice.problems == [] and bob.problems == []
    # Restart between fetch-less sends too: three messages queued across a restart.
    alice.send("bob@example.com", "q1")
    alice.close()
    alice = make_client("alice")
    alice.send("bob@example.com", "q2")
    bob.close()
    bob = make_client("bob")
    assert texts(bob.receive()) == ["q1", "q2"]


def _key_count(client) -> dict:
    return client.relay().key_count()


def _take_bundles(client, account_id: str, times: int) -> None:
    """What `times` new initiators do first: take one bundle each (concurrently, so the
    relay's group commit batches them)."""
    from concurrent.futures import ThreadPoolExecutor

    relay_client = client.relay()  # httpx.Client is safe to share between threads
    with ThreadPoolExecutor(8) as pool:
        for devices in pool.map(lambda _: relay_client.fetch_bundles(account_id), range(times)):
            assert len(devices) == 1


def test_one_time_prekeys_refill_after_use(make_client, relay):
    bob = make_client("bob")
    assert _key_count(bob) == {"one_time": consts.ONE_TIME_PREKEY_BATCH, "kem_one_time": consts.ONE_TIME_PREKEY_BATCH}
    bob_id = bob.whoami().account_id
    # Many initiators take bob's bundles. Most are simulated with the relay client (what a
    # new account does first); the last few are real new accounts that message bob.
    drainer = make_client("drainer")
    real = 3
    to_take = consts.ONE_TIME_PREKEY_BATCH - consts.ONE_TIME_PREKEY_REFILL_BELOW + 1
    _take_bundles(drainer, bob_id, to_take - real)
    senders = [make_client(f"sender{i}") for i in range(real)]
    for i, s in enumerate(senders):
        s.send("bob@example.com", f"hello from sender {i}")
    left = _key_count(bob)
    assert left["one_time"] < consts.ONE_TIME_PREKEY_REFILL_BELOW
    got = bob.receive()
    assert sorted(texts(got)) == [f"hello from sender {i}" for i in range(real)]
    after = _key_count(bob)
    assert after["one_time"] >= consts.ONE_TIME_PREKEY_REFILL_BELOW
    assert after["kem_one_time"] >= consts.ONE_TIME_PREKEY_REFILL_BELOW
    # The refilled keys work: a new account gets one and reaches bob.
    late = make_client("late")
    late.send("bob@example.com", "after the refill")
    assert texts(bob.receive()) == ["after the refill"]


def test_prekeys_refill_after_the_relay_ran_dry(make_client):
    """Every one-time key taken (bundle fetches that never became messages: a drain by a
    peer or the relay). The next message bob receives uses the last-resort KEM key and no
    X25519 one-time key; bob must still notice and refill."""
    bob = make_client("bob")
    bob_id = bob.whoami().account_id
    drainer = make_client("drainer")
    _take_bundles(drainer, bob_id, consts.ONE_TIME_PREKEY_BATCH)
    assert _key_count(bob) == {"one_time": 0, "kem_one_time": 0}
    make_client("carol").send("bob@example.com", "on the last-resort key")
    assert texts(bob.receive()) == ["on the last-resort key"]
    after = _key_count(bob)
    assert after["one_time"] >= consts.ONE_TIME_PREKEY_REFILL_BELOW
    assert after["kem_one_time"] >= consts.ONE_TIME_PREKEY_REFILL_BELOW


def test_outbox_flushes_after_the_relay_was_unreachable(make_client, monkeypatch):
    alice, bob = make_client("alice"), make_client("bob")
    alice.send("bob@example.com", "warm-up")  # session exists
    assert texts(bob.receive()) == ["warm-up"]

    relay_client = alice.relay()
    real_send = relay_client.send
    failures = []

    def flaky_send(*args, **kwargs):
        if not failures:
            failures.append(args)
            raise errors.RelayUnavailableError("relay at test unreachable (ConnectError)")
        return real_send(*args, **kwargs)

    monkeypatch.setattr(relay_client, "send", flaky_send)
    with pytest.raises(errors.RelayUnavailableError) as exc:
        alice.send("bob@example.com", "queued while offline")
    assert exc.value.exit_code == 4
    assert len(alice.store.outgoing()) == 1
    assert bob.receive() == []  # nothing reached the relay

    # The next send flushes the outbox first, then sends its own message.
    alice.send("bob@example.com", "next one")
    assert alice.store.outgoing() == []
    got = bob.receive()
    assert texts(got) == ["queued while offline", "next one"]
    assert bob.receive() == [] and bob.problems == []
    # Stored once on alice's side too.
    assert texts(alice.history("bob@example.com")) == ["warm-up", "queued while offline", "next one"]


def test_outbox_flushes_on_receive_and_after_restart(make_client, monkeypatch):
    alice, bob = make_client("alice"), make_client("bob")
    relay_client = alice.relay()

    def down(*args, **kwargs):
        raise errors.RelayUnavailableError("relay unreachable")

    monkeypatch.setattr(relay_client, "send", down)
    with pytest.raises(errors.RelayUnavailableError):
        alice.send("bob@example.com", "first contact, offline")  # prekey message queued
    monkeypatch.undo()
    alice.close()
    alice = make_client("alice")  # restart: the outbox is on disk
    assert len(alice.store.outgoing()) == 1
    assert alice.receive() == []  # receive flushes the outbox
    assert alice.store.outgoing() == []
    assert texts(bob.receive()) == ["first contact, offline"]
    assert alice.flush_outbox() == 0
    assert bob.receive() == []
    bob.send("alice@example.com", "got it")
    assert texts(alice.receive()) == ["got it"]


def test_outbox_resend_after_a_lost_answer_is_delivered_once(make_client, monkeypatch):
    """The relay stored the envelope but the answer was lost: the retry reuses the same
    message id, so the relay de-duplicates and bob sees it once."""
    alice, bob = make_client("alice"), make_client("bob")
    relay_client = alice.relay()
    real_send = relay_client.send
    state = {"lost": False}

    def lossy(*args, **kwargs):
        result = real_send(*args, **kwargs)
        if not state["lost"]:
            state["lost"] = True
            raise errors.RelayUnavailableError("relay timed out")
        return result

    monkeypatch.setattr(relay_client, "send", lossy)
    with pytest.raises(errors.RelayUnavailableError):
        alice.send("bob@example.com", "maybe sent")
    alice.send("bob@example.com", "surely sent")
    got = bob.receive()
    assert texts(got) == ["maybe sent", "surely sent"]
    assert bob.receive() == [] and bob.problems == []
