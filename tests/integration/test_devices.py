"""Several devices per account (issue 3): linking, fan-out, sent-message sync, removal, the
409 refetch path (R11), the device cap, and device injection into one's own account
(SECURITY-TESTS 4, 7).

Every client is a real `Client` against a real relay (uvicorn in a thread). Linking blocks
on both sides, so the new device links from a thread with its own `Client` (a Client, like
its SQLite connection, belongs to the thread that opened it) and is reopened afterwards.
The relay plays malicious by having its SQLite database edited, or by writing to the
unauthenticated provisioning routes as anyone holding the channel id could.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import threading
import time
from pathlib import Path

import pytest
from device_helpers import link_device

from imsg import errors
from imsg.client import Client
from imsg.client.delivery import Delivery, parse_bundle
from imsg.protocol import consts
from imsg.protocol import envelope as env
from imsg.protocol import provisioning as prov
from imsg.protocol import session as sess
from imsg.protocol.content import KIND_SYNC, KIND_TEXT, Content
from imsg.protocol.encoding import KEY_ED25519, encode_key
from imsg.protocol.identity import AccountKey, DeviceKeys, DeviceList, decode_device_list
from imsg.relay_client import AnonymousRelay, RelayClient

BOB = "bob@example.com"
ALICE = "alice@example.com"


def texts(messages) -> list[str]:
    return [m.text for m in messages]


def link(
    make_client, relay, existing: Client, name: str, *, history: int = 0, device_name: str = ""
) -> tuple[Client, object]:
    """Link a new device (home tmp/homes/NAME) to `existing`'s account; return it reopened
    in this thread, with the DeviceInfo `device_add_finish` returned."""
    info = link_device(relay.url, existing, _home(make_client, name), device_name, history=history)
    return make_client(name), info


_HOMES: list[Path] = []  # make_client's homes directory (tmp_path/"homes") of the running test


@pytest.fixture(autouse=True)
def _homes_dir(tmp_path):
    _HOMES[:] = [tmp_path / "homes"]
    yield


def _home(make_client, name: str) -> Path:
    return _HOMES[0] / name


def link_in_thread(relay, home: Path, code: str, name: str = "") -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run() -> None:
        try:
            with Client.open(home, relay=relay.url) as c:
                out["who"] = c.device_link(code, name)
        except BaseException as exc:
            out["exc"] = exc

    th = threading.Thread(target=run)
    th.start()
    return th, out


def relay_list(relay, account_id: str) -> bytes:
    with relay.db() as db:
        (blob,) = db.execute("SELECT device_list FROM accounts WHERE account_id = ?", (account_id,)).fetchone()
    return blob


def relay_devices(relay, account_id: str) -> list[int]:
    with relay.db() as db:
        return [
            r[0]
            for r in db.execute("SELECT device_id FROM devices WHERE account_id = ? ORDER BY device_id", (account_id,))
        ]


def envelope_counts(relay, account_id: str) -> dict[int, int]:
    with relay.db() as db:
        return dict(
            db.execute(
                "SELECT device_id, COUNT(*) FROM envelopes WHERE account_id = ? GROUP BY device_id", (account_id,)
            ).fetchall()
        )


def serial(blob: bytes) -> int:
    return decode_device_list(blob)[0].serial


def problems(client: Client) -> list[tuple[str, str]]:
    """Problems other than the notice that a contact added a device (same key: no re-verify)."""
    return [(p.message_id, p.code) for p in client.problems if p.code != "devices_changed"]


def conversation(client: Client, handle: str) -> list[tuple[str, str, str]]:
    return [(m.id, m.direction, m.text) for m in client.history(handle, 100)]


@pytest.fixture
def sends(monkeypatch):
    """Every RelayClient.send: (account id, device ids, error code or None, error details)."""
    calls: list[tuple[str, list[int], str | None, dict]] = []
    real = RelayClient.send

    def spy(self, account_id, message_id, envelopes):
        ids = [d for d, _ in envelopes]
        try:
            result = real(self, account_id, message_id, envelopes)
        except errors.RelayRefusedError as exc:
            calls.append((account_id, ids, exc.relay_code, dict(exc.details)))
            raise
        calls.append((account_id, ids, None, {}))
        return result

    monkeypatch.setattr(RelayClient, "send", spy)
    return calls


# --- linking ---


def test_second_and_third_device_link_with_contacts_names_and_history(make_client, relay):
    alice, bob = make_client("alice"), make_client("bob")
    make_client("carol")  # registered, so alice can write to her below
    me = alice.whoami()
    alice.send(BOB, "a1")
    bob.receive()
    bob.send(ALICE, "b1")
    alice.receive()
    alice.send(BOB, "a2")
    alice.send("carol@example.com", "c1")
    alice.verify(BOB, mark=True)
    before = relay_list(relay, me.account_id)

    alice2, info2 = link(make_client, relay, alice, "alice2", history=3, device_name="Alice's laptop QX7")
    assert info2.device_id == 2 and info2.name == "Alice's laptop QX7"
    alice3, info3 = link(make_client, relay, alice, "alice3", device_name="Alice's tablet ZK9")
    assert info3.device_id == 3

    for c, dev in ((alice, 1), (alice2, 2), (alice3, 3)):
        listed = c.devices()  # refreshes the signed list from the relay (whoami reads the cache)
        who = c.whoami()
        assert (who.account_id, who.handle, who.device_id, who.devices) == (me.account_id, ALICE, dev, 3)
        assert who.fingerprint == me.fingerprint
        # Contacts came over, with their verification state.
        rows = {r.handle: r for r in c.contacts()}
        assert set(rows) == {BOB, "carol@example.com"}
        assert rows[BOB].state == "verified" and rows["carol@example.com"].state == "unverified"
        assert rows[BOB].account_id == bob.whoami().account_id
        # Names are readable by every device of the account.
        assert [d.device_id for d in listed] == [1, 2, 3]
        assert [d.this_device for d in listed] == [d == dev for d in (1, 2, 3)]
        assert [d.name for d in listed][1:] == ["Alice's laptop QX7", "Alice's tablet ZK9"]
        # One profile key for the account, on every device (it derives the name-and-photo
        # key and the unidentified-access key).
        profile_key = c.store.load_account().profile_key
        assert len(profile_key) == 32 and profile_key == alice.store.load_account().profile_key

    # history=3: the three most recent messages across conversations; history=0: none.
    assert [t for _, _, t in conversation(alice2, BOB)] == ["b1", "a2"]
    assert [t for _, _, t in conversation(alice2, "carol@example.com")] == ["c1"]
    assert conversation(alice3, BOB) == []
    assert conversation(alice2, BOB) == conversation(alice, BOB)[-2:]

    # The relay's copy of the list is re-signed (serial up) and holds no plaintext name.
    stored = relay_list(relay, me.account_id)
    assert serial(stored) == serial(before) + 2
    assert relay_devices(relay, me.account_id) == [1, 2, 3]
    for name in ("Alice's laptop QX7", "Alice's tablet ZK9", "laptop QX7", "tablet ZK9"):
        for form in (name.encode(), name.encode("utf-16-le"), base64.b64encode(name.encode())):
            assert form not in stored
    with relay.db() as db:
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            for row in db.execute(f"SELECT * FROM {table}"):
                # "laptop QX7", not "QX7": three bytes turn up by chance in random key bytes.
                assert not any(
                    isinstance(v, (bytes, str)) and b"laptop QX7" in (v if isinstance(v, bytes) else v.encode())
                    for v in row
                ), table
    # Bob sees three devices of alice but cannot read their names.
    alice_contact = bob.store.get_contact(me.account_id)
    bob.send(ALICE, "hello all of you")
    alice_contact = bob.store.get_contact(me.account_id)
    from imsg.protocol.identity import open_device_name, verify_device_list

    listed = verify_device_list(alice_contact.device_list, alice_contact.account_key)
    assert len(listed.devices) == 3
    assert all(open_device_name(bob.store.load_account().account_private, d) == "" for d in listed.devices)
    for c in (alice, alice2, alice3):
        assert texts(c.receive()) == ["hello all of you"]


def test_wrong_code_fails_cleanly_on_both_sides(make_client, relay, tmp_path):
    alice = make_client("alice")
    me = alice.whoami().account_id
    before = relay_list(relay, me)
    pairing = alice.device_add_start()
    wrong = prov.make_code(pairing.channel, bytes(b ^ 0x5A for b in pairing.secret))
    home = tmp_path / "homes" / "new"
    th, out = link_in_thread(relay, home, wrong)
    with pytest.raises(errors.SecurityError) as exc:
        alice.device_add_finish(pairing, timeout=20)
    assert exc.value.exit_code == 6 and "pairing failed" in str(exc.value)
    th.join(40)
    assert not th.is_alive()
    err = out.get("exc")
    assert isinstance(err, errors.ImsgError), out
    assert err.exit_code in (3, 6), (type(err), err, err.exit_code)
    assert relay_list(relay, me) == before and relay_devices(relay, me) == [1]
    assert alice.devices() and [d.device_id for d in alice.devices()] == [1]
    with Client.open(home, relay=relay.url) as fresh:
        assert fresh.store.load_account() is None  # no account created on the new home


@pytest.mark.parametrize("how", ["unknown", "expired"])
def test_unknown_or_expired_channel(make_client, relay, tmp_path, how):
    alice = make_client("alice")
    me = alice.whoami().account_id
    before = relay_list(relay, me)
    if how == "unknown":
        code = prov.make_code(os.urandom(8), os.urandom(10))
        pairing = None
    else:
        pairing = alice.device_add_start()
        code = pairing.code
        with relay.db() as db:
            db.execute("UPDATE provisioning_channels SET expires_at = 1 WHERE channel = ?", (pairing.channel.hex(),))
    home = tmp_path / "homes" / "new"
    with Client.open(home, relay=relay.url) as c:
        with pytest.raises(errors.LocalStateError, match="unknown or expired") as exc:
            c.device_link(code, "new")
        assert exc.value.exit_code == 3
        assert c.store.load_account() is None
    if pairing is not None:  # the existing side, waiting on an expired channel, also fails cleanly
        with pytest.raises(errors.ImsgError) as exc2:
            alice.device_add_finish(pairing, timeout=10)
        assert exc2.value.exit_code == 3, (exc2.value, exc2.value.exit_code)
    assert relay_list(relay, me) == before and relay_devices(relay, me) == [1]


def _relay_hello(relay_url: str) -> dict:
    """What a relay would send to get its own device linked: real device keys, its own token."""
    rogue = DeviceKeys.generate(0, os.urandom)
    return {
        "v": 1,
        "identity_key": prov.b64(rogue.identity.public),
        "signing_key": prov.b64(rogue.signing.public),
        "token": base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode(),
        "name": "totally legit",
    }


@pytest.mark.parametrize("forgery", ["garbage", "other_secret", "other_channel", "wrong_direction"])
def test_relay_forged_box_to_the_existing_device(make_client, relay, forgery):
    alice = make_client("alice")
    me = alice.whoami().account_id
    before = relay_list(relay, me)
    pairing = alice.device_add_start()
    ch = pairing.channel
    hello = _relay_hello(relay.url)
    body = {
        "garbage": os.urandom(300),
        "other_secret": prov.seal_box(os.urandom(10), ch, prov.TO_EXISTING, 0, hello),
        "other_channel": prov.seal_box(pairing.secret, os.urandom(8), prov.TO_EXISTING, 0, hello),
        "wrong_direction": prov.seal_box(pairing.secret, ch, prov.TO_NEW, 0, hello),
    }[forgery]
    with RelayClient(relay.url) as anyone:  # the box routes are unauthenticated
        anyone.put_box(ch.hex(), prov.TO_EXISTING, body)
    with pytest.raises(errors.SecurityError, match="pairing failed") as exc:
        alice.device_add_finish(pairing, timeout=10)
    assert exc.value.exit_code == 6
    assert relay_list(relay, me) == before and relay_devices(relay, me) == [1]
    assert alice.store.load_account().device_list == before
    with relay.db() as db:  # the channel was closed: nothing left for anyone to read
        assert db.execute("SELECT COUNT(*) FROM provisioning_channels").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM provisioning_messages").fetchone() == (0,)


@pytest.mark.parametrize("forgery", ["garbage", "other_secret", "no_v"])
def test_relay_forged_box_to_the_new_device(make_client, relay, tmp_path, forgery):
    """The relay answers the new device itself, offering an account of its own."""
    alice = make_client("alice")
    me = alice.whoami().account_id
    before = relay_list(relay, me)
    pairing = alice.device_add_start()
    ch = pairing.channel
    evil = AccountKey.generate(os.urandom)
    welcome = {
        "v": 1,
        "account_id": evil.account_id,
        "handle": ALICE,
        "name": "",
        "account_private": prov.b64(evil.private),
        "device_id": 1,
        "device_list": "",
        "relay": relay.url,
        "contacts": [],
        "history": [],
    }
    body = {
        "garbage": os.urandom(500),
        "other_secret": prov.seal_box(os.urandom(10), ch, prov.TO_NEW, 0, welcome),
        "no_v": b"{}",
    }[forgery]
    with relay.db() as db:
        db.execute("INSERT INTO provisioning_messages (channel, box, body) VALUES (?, 'new', ?)", (ch.hex(), body))
    home = tmp_path / "homes" / "new"
    with Client.open(home, relay=relay.url) as c:
        with pytest.raises(errors.SecurityError, match="pairing failed") as exc:
            c.device_link(pairing.code, "new")
        assert exc.value.exit_code == 6
        assert c.store.load_account() is None
    assert relay_list(relay, me) == before and relay_devices(relay, me) == [1]


def test_link_code_is_single_use(make_client, relay, tmp_path):
    alice = make_client("alice")
    pairing = alice.device_add_start()
    th, out = link_in_thread(relay, tmp_path / "homes" / "alice2", pairing.code, "two")
    alice.device_add_finish(pairing, timeout=20)
    th.join(40)
    assert "who" in out, out
    with Client.open(tmp_path / "homes" / "other", relay=relay.url) as c:
        with pytest.raises(errors.LocalStateError, match="unknown or expired"):
            c.device_link(pairing.code, "again")
        assert c.store.load_account() is None
    assert [d.device_id for d in alice.devices()] == [1, 2]


# --- fan-out and sent-message sync ---


def test_fan_out_to_every_device_and_sync_to_own_devices(make_client, relay, sends):
    alice, bob = make_client("alice"), make_client("bob")
    alice_id, bob_id = alice.whoami().account_id, bob.whoami().account_id
    alice2, _ = link(make_client, relay, alice, "alice2")
    alice3, _ = link(make_client, relay, alice, "alice3")
    bob2, _ = link(make_client, relay, bob, "bob2")
    bob3, _ = link(make_client, relay, bob, "bob3")
    alices, bobs = [alice, alice2, alice3], [bob, bob2, bob3]

    sent = alice.send(BOB, "from alice's first device")
    assert sent.devices == 3
    assert envelope_counts(relay, bob_id) == {1: 1, 2: 1, 3: 1}
    # The sync copies, sealed since issue 12: the relay wants every device of the account
    # addressed, so device 1 gets a decoy of the same size (dropped when it comes back).
    assert envelope_counts(relay, alice_id) == {1: 1, 2: 1, 3: 1}
    assert not any(code for _, _, code, _ in sends)  # no 409: everyone had the right list
    for b in bobs:
        got = b.receive()
        assert [(m.id, m.sender, m.text) for m in got] == [(sent.id, ALICE, "from alice's first device")]
        assert problems(b) == []
    for a in (alice2, alice3):
        assert a.receive() == []  # a sync copy is history, not a new incoming message
        assert problems(a) == []

    r = bob2.send(ALICE, "reply from bob's second device")
    assert envelope_counts(relay, alice_id) == {1: 2, 2: 1, 3: 1}  # alice's decoy is still there
    assert envelope_counts(relay, bob_id) == {1: 1, 2: 1, 3: 1}  # bob2's copies and decoy
    for a in alices:
        assert [(m.id, m.sender, m.text) for m in a.receive()] == [(r.id, BOB, "reply from bob's second device")]
    for b in (bob, bob3):
        assert b.receive() == []

    s2 = alice3.send(BOB, "from alice's third device")  # a linked device can send too
    for b in bobs:
        assert texts(b.receive()) == ["from alice's third device"]
    for a in (alice, alice2):
        a.receive()
    alice3.receive()  # its decoy
    assert envelope_counts(relay, alice_id) == {} and envelope_counts(relay, bob_id) == {}

    expected = [
        (sent.id, "out", "from alice's first device"),
        (r.id, "in", "reply from bob's second device"),
        (s2.id, "out", "from alice's third device"),
    ]
    for a in alices:
        assert conversation(a, BOB) == expected
        assert [m.sender for m in a.history(BOB)] == [ALICE, BOB, ALICE]
    for b in bobs:
        assert conversation(b, ALICE) == [(i, {"out": "in", "in": "out"}[d], t) for i, d, t in expected]
    # A note to self reaches the account's other devices only.
    note = alice.send(ALICE, "note to self")
    assert note.devices == 2
    assert envelope_counts(relay, alice_id) == {1: 1, 2: 1, 3: 1}  # sealed: with the decoy
    for a in (alice2, alice3):
        a.receive()
        assert [m.text for m in a.store.history(alice_id, 10)] == ["note to self"]


def _forge_sync_from(sender: Client, to: str, *, dest_id: str, dest_key: bytes, text: str) -> str:
    """`sender` sends a KIND_SYNC content (claiming to be a sent-message copy) to `to`'s
    devices, through the ordinary encrypt-and-send path."""
    account = sender._account()
    contact, devices = sender._resolve(to)
    mid = secrets.token_hex(16)
    content = Content(
        mid, int(time.time() * 1000), KIND_SYNC, to, "bob@example.com", text, dest_id, encode_key(KEY_ED25519, dest_key)
    )
    package, ct = env.seal_content(content.encode(), os.urandom)
    envelopes = sender._encrypt_for(account, contact.account_id, list(devices.devices), package, ct)
    sender.relay().send(contact.account_id, mid, envelopes)
    return mid


def test_sync_message_from_another_account_is_rejected(make_client, relay):
    alice, bob, mallory = make_client("alice"), make_client("bob"), make_client("mallory")
    alice.send(BOB, "real")
    bob.receive()
    bob_contact = alice.store.contact_by_handle(BOB)
    mid = _forge_sync_from(
        mallory,
        ALICE,
        dest_id=bob_contact.account_id,
        dest_key=bob_contact.account_key,
        text="you told bob you owe me money",
    )
    assert alice.receive() == []
    assert [(p.message_id, p.code) for p in alice.problems] == [(mid, "rejected")]
    assert "own devices" in alice.problems[0].message
    alice.problems.clear()
    assert not alice.store.has_message(mid)
    assert texts(alice.history(BOB)) == ["real"]
    assert (
        alice.store.get_contact(mallory.whoami().account_id) is None
        or alice.store.get_contact(mallory.whoami().account_id).handle != BOB
    )
    assert envelope_counts(relay, alice.whoami().account_id) == {}  # acked: never readable
    # Mallory's genuine texts still get through (the session was not wedged).
    mallory.send(ALICE, "plain hello")
    assert texts(alice.receive()) == ["plain hello"]


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))).digest()


def test_sync_message_from_a_relay_injected_own_device_is_rejected(make_client, relay):
    """The relay adds a device to alice's own account (no account-key signature) and sends
    alice a "sent-message copy" from it: refused, nothing stored."""
    alice = make_client("alice")
    make_client("bob")
    alice.send(BOB, "real")
    me = alice.store.load_account()
    token = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
    with relay.db() as db:
        db.execute("INSERT INTO devices VALUES (?, ?, ?, ?)", (me.account_id, 2, _token_hash(token), 0))
    rogue = DeviceKeys.generate(2, os.urandom)
    mine = decode_device_list(me.device_list)[0].device(1)
    with RelayClient(relay.url, token) as rc:
        bundle = parse_bundle(rc.fetch_bundles(me.account_id, 1)[0])
        session = sess.initiate(
            rogue,
            sess.Address(me.account_id, 2),
            sess.Address(me.account_id, 1),
            mine.identity_key,
            mine.signing_key,
            bundle,
            os.urandom,
        )
        bob_contact = alice.store.contact_by_handle(BOB)
        mid = secrets.token_hex(16)
        for kind in (KIND_SYNC, KIND_TEXT):
            mid = secrets.token_hex(16)
            content = Content(
                mid,
                int(time.time() * 1000),
                kind,
                ALICE,
                BOB,
                f"forged {kind}",
                *(
                    (bob_contact.account_id, encode_key(KEY_ED25519, bob_contact.account_key))
                    if kind == KIND_SYNC
                    else ()
                ),
            )
            package, ct = env.seal_content(content.encode(), os.urandom)
            body = env.Envelope(
                env.KIND_IDENTIFIED, sess.Address(me.account_id, 2), session.encrypt(package, os.urandom), ct
            ).encode()
            rc.send(me.account_id, mid, [(1, body)])
    assert alice.receive() == []
    assert [p.code for p in alice.problems] == ["rejected", "rejected"]
    assert not any(alice.store.has_message(p.message_id) for p in alice.problems)
    assert texts(alice.history(BOB)) == ["real"]
    assert alice.store.load_account().device_list == me.device_list  # no rogue device adopted


def test_relay_injected_own_device_never_gets_sync_copies(make_client, relay, sends, monkeypatch):
    """Row 4, own-account path: alice has two real devices; the relay adds a third (rows
    only, or with a list nobody signed). Alice's sends never encrypt a sync copy to it."""
    alice, bob = make_client("alice"), make_client("bob")
    alice2, _ = link(make_client, relay, alice, "alice2")
    me = alice.whoami().account_id
    encrypted: list[tuple[str, list[int]]] = []
    real = Delivery.encrypt_for

    def spy(self, account, account_id, targets, package, content_ct):
        encrypted.append((account_id, [d.device_id for d in targets]))
        return real(self, account, account_id, targets, package, content_ct)

    monkeypatch.setattr(Delivery, "encrypt_for", spy)
    # The sync copies go sealed since issue 12: their 409s are answers to sealed sends.
    real_sealed = AnonymousRelay.send_sealed

    def sealed_spy(self, account_id, message_id, envelopes, key):
        try:
            return real_sealed(self, account_id, message_id, envelopes, key)
        except errors.RelayRefusedError as exc:
            sends.append((account_id, [d for d, _ in envelopes], exc.relay_code, dict(exc.details)))
            raise

    monkeypatch.setattr(AnonymousRelay, "send_sealed", sealed_spy)
    token = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
    with relay.db() as db:
        db.execute("INSERT INTO devices VALUES (?, ?, ?, ?)", (me, 3, _token_hash(token), 0))
    for variant in ("rows_only", "unsigned_list"):
        if variant == "unsigned_list":
            genuine, _, _ = decode_device_list(relay_list(relay, me))
            rogue = DeviceKeys.generate(3, os.urandom)
            forged = DeviceList(
                genuine.account_key, genuine.serial + 1, genuine.signed_at + 1, genuine.devices + (rogue.entry(0),)
            )
            blob = AccountKey.generate(os.urandom).sign_device_list(forged)
            with relay.db() as db:
                db.execute("UPDATE accounts SET device_list = ? WHERE account_id = ?", (blob, me))
        with pytest.raises(errors.SecurityError) as exc:
            alice.send(BOB, f"to bob ({variant})")
        assert exc.value.exit_code == 6
        assert all(3 not in ids for acct, ids in encrypted if acct == me)
        assert envelope_counts(relay, me).get(3) is None
        assert alice.store.outgoing() == []
        assert [d.device_id for d in alice.devices(refresh=False)] == [1, 2]
    # The 409 named the rogue device as missing; it was never added.
    assert any(
        acct == me and code == "device_mismatch" and 3 in details.get("missing", []) for acct, _, code, details in sends
    )
    # Bob's sends never encrypt to it either (he only trusts alice's signed list): the
    # relay's list is not signed by alice's key, so the send is refused loudly.
    with pytest.raises(errors.SecurityError):
        bob.send(ALICE, "hi alice")
    assert all(3 not in ids for acct, ids in encrypted if acct == me)
    assert envelope_counts(relay, me) == {}


# --- removal ---


def test_removed_device_receives_nothing_and_contacts_refetch(make_client, relay, sends):
    alice, bob = make_client("alice"), make_client("bob")
    bob_id = bob.whoami().account_id
    bob2, _ = link(make_client, relay, bob, "bob2", device_name="old phone")
    bob3, _ = link(make_client, relay, bob, "bob3")
    alice.send(BOB, "before")  # alice now holds bob's 3-device list
    for b in (bob, bob2, bob3):
        assert texts(b.receive()) == ["before"]
    old = relay_list(relay, bob_id)

    remaining = bob.device_remove(2)
    assert [d.device_id for d in remaining] == [1, 3]
    new = relay_list(relay, bob_id)
    assert serial(new) == serial(old) + 1 and decode_device_list(new)[0].device_ids == [1, 3]
    assert relay_devices(relay, bob_id) == [1, 3]
    assert [d.device_id for d in bob3.devices()] == [1, 3]

    with pytest.raises(errors.RelayRefusedError, match="removed") as exc:
        bob2.receive()
    assert exc.value.exit_code == 5 and exc.value.status == 401

    sends.clear()
    sent = alice.send(BOB, "after")
    assert sent.devices == 2
    # First try: the stale list (1, 2, 3) → 409 extra [2]; then the refetched one.
    assert [(ids, code) for acct, ids, code, _ in sends if acct == bob_id] == [
        ([1, 2, 3], "device_mismatch"),
        ([1, 3], None),
    ]
    assert sends[0][3].get("extra") == [2]
    assert envelope_counts(relay, bob_id) == {1: 1, 3: 1}
    assert alice.store.load_session(sess.Address(bob_id, 2)) is None
    from imsg.protocol.identity import verify_device_list

    contact = alice.store.get_contact(bob_id)
    assert verify_device_list(contact.device_list, contact.account_key).device_ids == [1, 3]
    # Bob's own sync copies skip the removed device too.
    bob.send(ALICE, "from bob after removal")
    assert envelope_counts(relay, bob_id) == {1: 2, 3: 2}  # sealed: with bob's own decoy
    for b in (bob, bob3):
        b.receive()
    assert texts(bob3.history(ALICE)) == ["before", "after", "from bob after removal"]
    assert texts(alice.receive()) == ["from bob after removal"]
    for _ in range(3):
        alice.send(BOB, "more")
    assert 2 not in envelope_counts(relay, bob_id)
    with pytest.raises(errors.RelayRefusedError):
        bob2.receive()
    # A device cannot remove itself from itself; an unknown id is a clear error.
    with pytest.raises(errors.UsageError):
        bob.device_remove(1)
    with pytest.raises(errors.LocalStateError):
        bob.device_remove(2)


def _encrypt_spy(monkeypatch, log: list):
    real = Delivery.encrypt_for

    def spy(self, account, account_id, targets, package, content_ct):
        log.append((account_id, [d.device_id for d in targets]))
        return real(self, account, account_id, targets, package, content_ct)

    monkeypatch.setattr(Delivery, "encrypt_for", spy)


@pytest.mark.parametrize("when", ["between_encrypt_and_send", "stale_cache"])
def test_r11_device_removed_mid_send(make_client, relay, sends, monkeypatch, when):
    """R11: 5 recipient devices, one removed mid-send → 409, refetch, resend; 0 encryptions
    to the removed device after its removal; nothing lost."""
    alice, bob = make_client("alice"), make_client("bob")
    bob_id = bob.whoami().account_id
    bobs = [bob] + [link(make_client, relay, bob, f"bob{i}")[0] for i in range(2, 6)]
    alice.send(BOB, "warm-up")
    for b in bobs:
        assert texts(b.receive()) == ["warm-up"]
    encrypted: list = []
    _encrypt_spy(monkeypatch, encrypted)
    marker: dict = {}
    if when == "stale_cache":
        bob.device_remove(5)
    else:
        real_send = RelayClient.send

        def remove_first(self, account_id, message_id, envelopes):
            if "at" not in marker and account_id == bob_id:
                bob.device_remove(5)  # after alice encrypted to all five, before the relay sees it
                marker["at"] = len(encrypted)
                assert encrypted[-1] == (bob_id, [1, 2, 3, 4, 5])
            return real_send(self, account_id, message_id, envelopes)

        monkeypatch.setattr(RelayClient, "send", remove_first)
    sends.clear()
    sent = alice.send(BOB, "mid-send")
    assert sent.devices == 4
    # The first attempt was encrypted under the list alice held (all five, before the
    # removal or before she could know of it); the relay refused it (409 extra [5]) and
    # stored nothing; the retry keeps the four envelopes and encrypts to nobody new.
    assert [(ids, code, details.get("extra")) for acct, ids, code, details in sends if acct == bob_id] == [
        ([1, 2, 3, 4, 5], "device_mismatch", [5]),
        ([1, 2, 3, 4], None, None),
    ]
    assert [ids for acct, ids in encrypted if acct == bob_id] == [[1, 2, 3, 4, 5], []]
    assert envelope_counts(relay, bob_id) == {1: 1, 2: 1, 3: 1, 4: 1}
    assert alice.store.outgoing() == []
    for b in bobs[:4]:
        got = b.receive()
        assert [(m.id, m.text) for m in got] == [(sent.id, "mid-send")]
    with pytest.raises(errors.RelayRefusedError):
        bobs[4].receive()
    encrypted.clear()
    assert alice.send(BOB, "next").devices == 4
    assert [ids for acct, ids in encrypted if acct == bob_id] == [[1, 2, 3, 4]]  # 0 to the removed device
    assert 5 not in envelope_counts(relay, bob_id)


def test_r11_device_added_mid_send_gets_the_message(make_client, relay, sends, monkeypatch):
    """The 409 lists a device the sender did not know (missing): the sender refetches the
    signed list, encrypts for the new device too, and nothing is lost."""
    alice, bob = make_client("alice"), make_client("bob")
    bob_id = bob.whoami().account_id
    alice.send(BOB, "warm-up")
    bob.receive()
    real_send = RelayClient.send
    added: dict = {}

    def add_first(self, account_id, message_id, envelopes):
        if not added and account_id == bob_id:
            added["bob2"] = link(make_client, relay, bob, "bob2")[0]
        return real_send(self, account_id, message_id, envelopes)

    monkeypatch.setattr(RelayClient, "send", add_first)
    sends.clear()
    sent = alice.send(BOB, "while bob links a device")
    monkeypatch.setattr(RelayClient, "send", real_send)
    assert envelope_counts(relay, bob_id) == {1: 1, 2: 1}
    assert texts(bob.receive()) == ["while bob links a device"]
    assert [(m.id, m.text) for m in added["bob2"].receive()] == [(sent.id, "while bob links a device")]


# --- the device cap ---


@pytest.mark.slow  # nine real links (~5 s)
def test_eleventh_device_cannot_link(make_client, relay, tmp_path, monkeypatch):
    alice = make_client("alice")
    me = alice.whoami().account_id
    for i in range(2, 11):
        link(make_client, relay, alice, f"alice{i}")[0].close()
    assert len(alice.devices()) == 10
    before = relay_list(relay, me)
    # The client refuses to open a channel at all.
    with pytest.raises(errors.LocalStateError, match="10 devices") as exc:
        alice.device_add_start()
    assert exc.value.exit_code == 3 and "remove" in (exc.value.hint or "")
    # A client without that check meets the relay's cap: 409 too_many_devices, nothing changes.
    monkeypatch.setattr(consts, "MAX_DEVICES", 11)
    pairing = alice.device_add_start()
    home = tmp_path / "homes" / "alice11"
    th, out = link_in_thread(relay, home, pairing.code, "eleventh")
    with pytest.raises(errors.RelayRefusedError) as exc2:
        alice.device_add_finish(pairing, timeout=20)
    th.join(40)
    assert exc2.value.relay_code == "too_many_devices" and exc2.value.details.get("limit") == 10
    assert exc2.value.exit_code == 5
    assert isinstance(out.get("exc"), errors.ImsgError)
    assert relay_list(relay, me) == before and relay_devices(relay, me) == list(range(1, 11))
    assert alice.store.load_account().device_list == before
    with Client.open(home, relay=relay.url) as c:
        assert c.store.load_account() is None
    # After removing one, linking works again.
    monkeypatch.setattr(consts, "MAX_DEVICES", 10)
    alice.device_remove(10)
    new, info = link(make_client, relay, alice, "alice12")
    assert info.device_id > 10 and len(new.devices()) == 10  # a fresh id, never 10 again


def test_relay_cap_is_checked_without_the_client(make_client, relay):
    """PUT /v1/devices past the cap: 409 too_many_devices with the limit, nothing stored."""
    alice = make_client("alice")
    account = alice.store.load_account()
    key = AccountKey(account.account_private)
    entries = list(decode_device_list(account.device_list)[0].devices)
    rc = alice.relay()
    for i in range(2, 12):
        entries.append(DeviceKeys.generate(i, os.urandom).entry(0))
        blob = key.sign_device_list(DeviceList(key.public, i, 0, tuple(entries)))
        token = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
        if i <= 10:
            rc.add_device(i, token, blob)
            last = blob
        else:
            with pytest.raises(errors.RelayRefusedError) as exc:
                rc.add_device(i, token, blob)
            assert exc.value.status == 409 and exc.value.relay_code == "too_many_devices"
            assert exc.value.details.get("limit") == 10
    assert relay_devices(relay, account.account_id) == list(range(1, 11))
    assert relay_list(relay, account.account_id) == last


def test_device_ids_are_never_reused(make_client, relay):
    """A removed device's id must not come back for a new device: a contact holding the old
    list would see the same ids, get no 409, and encrypt to the removed device's key — which
    the new device cannot read (lost) and the removed one could (if the relay kept it)."""
    alice, bob = make_client("alice"), make_client("bob")
    bob_id = bob.whoami().account_id
    bob2, first = link(make_client, relay, bob, "bob2")
    alice.send(BOB, "before")  # alice caches bob's list (1, 2)
    bob.receive(), bob2.receive()
    bob.device_remove(first.device_id)
    bob2b, second = link(make_client, relay, bob, "bob2b")
    assert second.device_id != first.device_id
    assert second.device_id > first.device_id
    sent = alice.send(BOB, "after the swap")
    assert envelope_counts(relay, bob_id) == {1: 1, second.device_id: 1}
    assert [(m.id, m.text) for m in bob2b.receive()] == [(sent.id, "after the swap")]
    assert problems(bob2b) == []
    assert texts(bob.receive()) == ["after the swap"]


def test_a_slow_new_device_still_gets_the_welcome(make_client, relay, monkeypatch):
    """Closing a pairing channel deletes its boxes, so the existing device must not close
    it before the new device has fetched the welcome: it waits for the new device's
    acknowledgement. (Found as a rare CI failure when the existing device closed first.)"""
    alice = make_client("alice")
    real_get_box = RelayClient.get_box

    def slow_to_fetch_the_welcome(self, channel, box, *, wait=0):
        if box == prov.TO_NEW:
            time.sleep(1.0)  # the existing device has posted the welcome by now
        return real_get_box(self, channel, box, wait=wait)

    monkeypatch.setattr(RelayClient, "get_box", slow_to_fetch_the_welcome)
    laptop, info = link(make_client, relay, alice, "alice-laptop")
    assert laptop.whoami().device_id == info.device_id == 2
    laptop.close()
