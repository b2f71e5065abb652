"""Sealed sender through a real relay: the relay stores envelopes that name no sender,
accepts them only with the recipient's access key (or allow-anyone), and the recipient
checks the relay-signed certificate against the sender's signed device list and session.

A contact's profile key arrives inside end-to-end messages (imsg/client/profiles.py):
`share(a, b)` has b add a to its contacts and write to a."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from imsg import errors
from imsg.client import Client
from imsg.protocol import sealed as proto
from imsg.protocol.consts import SEALED_BUCKETS
from imsg.protocol.encoding import KEY_X25519, encode_key
from imsg.protocol.identity import verify_device_list
from imsg.protocol.session import Address
from imsg.relay_client import AnonymousRelay
from imsg_relay.sealed import KEYS_FILE, load_or_create_keys, sign_certificate

ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@example.com"


def texts(messages) -> list[str]:
    return [m.text for m in messages]


def share(a: Client, b: Client) -> None:
    """b gives a its profile key the way the profile feature does: b puts a in its address
    book, and b's next message to a carries the key."""
    handle = a.whoami().handle
    b.contacts_add(handle)
    b.send(handle, "hello")
    a.receive()
    assert a.store.contact_by_handle(b.whoami().handle).profile_key == b.store.load_account().profile_key


def identifiers(c: Client) -> dict[str, bytes]:
    """Everything that would name `c` as a sender, as the bytes a relay could store."""
    account = c.store.load_account()
    device = c._device(account)
    return {
        "account id (hex)": account.account_id.encode(),
        "account id (raw)": bytes.fromhex(account.account_id),
        "handle": account.handle.encode(),
        "account key": account.account_public,
        "identity key": device.identity.public,
        "signing key": device.signing.public,
        "sealed key": device.sealed.public[:64],
        "token": account.token.encode(),
    }


def rows_naming(rows, needle: bytes):
    for table, row in rows:
        for value in row:
            data = (
                value.encode()
                if isinstance(value, str)
                else bytes(value)
                if isinstance(value, (bytes, memoryview))
                else b""
            )
            if needle in data:
                yield table, row


def check_no_sender(rows, sender: Client, recipient: Client, sealed_ids: set[str]) -> int:
    """No row about the recipient or a sealed message holds any identifier of the sender;
    returns how many sealed envelope rows were checked."""
    recipient_id = recipient.store.load_account().account_id.encode()
    about = [
        (t, r)
        for t, r in rows
        if any((isinstance(v, str) and (v.encode() == recipient_id or v in sealed_ids)) for v in r)
    ]
    for name, needle in identifiers(sender).items():
        assert not list(rows_naming(about, needle)), f"the relay stores the sender's {name} beside the recipient"
    return sum(1 for t, r in about if t == "envelopes")


def sqlite_rows(relay) -> list:
    conn = relay.db()
    try:
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return [(t, row) for t in tables for row in conn.execute(f'SELECT * FROM "{t}"')]
    finally:
        conn.close()


def envelope_sizes(relay) -> list[int]:
    conn = relay.db()
    try:
        return [n for (n,) in conn.execute("SELECT length(body) FROM envelopes")]
    finally:
        conn.close()


def sealed_conversation(alice: Client, bob: Client) -> set[str]:
    share(alice, bob)
    share(bob, alice)
    bob.receive()
    alice.receive()
    ids = set()
    for text in ("short", "x" * 1500, "y" * 9000):
        sent = alice.send(BOB, text)
        assert sent.sealed, text
        ids.add(sent.id)
    return ids


def test_sealed_conversation_leaves_no_sender_at_the_relay(make_client, relay):
    alice, bob = make_client("alice"), make_client("bob")
    ids = sealed_conversation(alice, bob)
    # Before bob fetches: three rows, no sender column, bucket sizes, nothing of alice's.
    conn = relay.db()
    columns = [r[1] for r in conn.execute("PRAGMA table_info(envelopes)")]
    conn.close()
    assert columns == ["seq", "account_id", "device_id", "message_id", "body", "received_at"]
    assert check_no_sender(sqlite_rows(relay), alice, bob, ids) == 3
    assert set(envelope_sizes(relay)) <= set(SEALED_BUCKETS) and len(set(envelope_sizes(relay))) == 3
    assert texts(bob.receive()) == ["short", "x" * 1500, "y" * 9000]
    assert bob.problems == []
    assert [m.sender for m in bob.history(ALICE)][-3:] == [ALICE] * 3
    # Bob answers sealed too; alice reads it.
    reply = bob.send(ALICE, "sealed reply")
    assert reply.sealed
    assert check_no_sender(sqlite_rows(relay), bob, alice, {reply.id}) == 1
    assert texts(alice.receive()) == ["sealed reply"]


def test_relay_log_names_no_sender_of_sealed_messages(tmp_path, relay_proc):
    alice = Client.open(tmp_path / "a", relay=relay_proc.url)
    bob = Client.open(tmp_path / "b", relay=relay_proc.url)
    try:
        alice.init(ALICE)
        bob.init(BOB)
        log_before = relay_proc.log()
        sealed_conversation(alice, bob)
        assert texts(bob.receive())[-1] == "y" * 9000
        new_log = relay_proc.log()[len(log_before) :]
        for name, needle in identifiers(alice).items():
            assert needle.decode("latin-1") not in new_log, name
    finally:
        alice.close()
        bob.close()


def test_sealed_conversation_on_postgres_leaves_no_sender(tmp_path):
    psycopg = pytest.importorskip("psycopg")
    from relay.test_postgres import PG, pg_reason

    from support.relays import ThreadRelay, relay_settings

    if pg_reason is not None:
        pytest.skip(pg_reason)
    from imsg_relay.storage.postgres import PostgresStorage

    schema = f"imsg_test_sealed_{int(time.time() * 1000) % 10**9}"
    try:
        with ThreadRelay(relay_settings(tmp_path / "relay"), storage=PostgresStorage(PG, schema=schema)) as live:
            alice, bob = Client.open(tmp_path / "a", relay=live.url), Client.open(tmp_path / "b", relay=live.url)
            try:
                alice.init(ALICE)
                bob.init(BOB)
                ids = sealed_conversation(alice, bob)
                with psycopg.connect(PG) as conn:
                    conn.execute(f'SET search_path TO "{schema}"')
                    tables = [
                        t
                        for (t,) in conn.execute(
                            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
                        )
                    ]
                    assert "sealed_access" in tables
                    rows = [(t, row) for t in tables for row in conn.execute(f'SELECT * FROM "{t}"')]
                    sizes = [n for (n,) in conn.execute("SELECT length(body) FROM envelopes")]
                assert check_no_sender(rows, alice, bob, ids) == 3
                assert set(sizes) <= set(SEALED_BUCKETS)
                assert texts(bob.receive()) == ["short", "x" * 1500, "y" * 9000]
            finally:
                alice.close()
                bob.close()
    finally:
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_without_the_access_key_the_send_falls_back_to_identified(make_client, relay):
    alice, bob = make_client("alice"), make_client("bob")
    attempts = []
    real = AnonymousRelay.send_sealed

    def spy(self, *args, **kwargs):
        try:
            return real(self, *args, **kwargs)
        except errors.RelayRefusedError as exc:
            attempts.append(exc.status)
            raise

    AnonymousRelay.send_sealed = spy
    try:
        sent = alice.send(BOB, "no key yet")
    finally:
        AnonymousRelay.send_sealed = real
    assert attempts == [401] and not sent.sealed and sent.devices == 1
    got = bob.receive()
    assert texts(got) == ["no key yet"] and got[0].sender == ALICE
    assert alice.store.outgoing() == []


def test_sealed_only_keeps_the_message_until_it_can_go_sealed(make_client, relay):
    alice, bob = make_client("alice"), make_client("bob")
    alice.send(BOB, "first contact")
    bob.receive()
    alice.sealed().set_sealed_only(True)
    with pytest.raises(errors.SealedOnlyError) as exc:
        alice.send(BOB, "only sealed, please")
    assert exc.value.exit_code == 5 and exc.value.code == "sealed_only"
    kept = exc.value.details["message_id"]
    assert exc.value.details["kept"] == "outbox"
    assert [b.message_id for b in alice.store.outgoing()] == [kept]
    assert bob.receive() == []  # nothing went out identified
    # Still waiting on the next flush (not dropped as undeliverable).
    alice.receive()
    assert [b.message_id for b in alice.store.outgoing()] == [kept]
    assert [p.code for p in alice.problems] == ["sealed_only_waiting"]
    # Bob lets anyone send him sealed messages: the kept message goes, sealed.
    bob.sealed().publish_access(allow_anyone=True)
    assert bob.sealed().status().allow_anyone
    alice.receive()
    assert alice.store.outgoing() == []
    got = bob.receive()
    assert [(m.id, m.text, m.sender) for m in got] == [(kept, "only sealed, please", ALICE)]
    assert alice.send(BOB, "and now").sealed


def test_profile_key_rotation_revokes_the_old_access_key(make_client, relay):
    alice, bob = make_client("alice"), make_client("bob")
    share(alice, bob)
    assert alice.send(BOB, "with the key").sealed
    # Bob stops sharing: `profile share off` rotates his key and tells the relay.
    bob.set_share_policy("off")
    # Issue 12 (no silent downgrade): a 401 although alice holds a key is not taken as a
    # reason to send identified — it is exactly what a relay that wants to unmask her
    # would answer. The message is kept in the outbox and the refusal is reported.
    with pytest.raises(errors.SealedRefusedError) as exc:
        alice.send(BOB, "with the old key")
    assert exc.value.exit_code == 5 and exc.value.details["kept"] == "outbox"
    assert [b.message_id for b in alice.store.outgoing()] == [exc.value.details["message_id"]]
    assert any(p.code == "sealed_refused" for p in alice.problems)
    assert texts(bob.receive()) == ["with the key"]


def test_a_rotation_made_elsewhere_is_published_on_the_next_send(make_client, relay):
    alice, bob = make_client("alice"), make_client("bob")
    share(alice, bob)
    share(bob, alice)
    account = bob.store.load_account()
    with bob.store.transaction():  # rotated without calling publish (another code path)
        bob.store.save_account(replace(account, profile_key=bytes(32 * [9])))
    assert bob.send(ALICE, "bob sends anything").sealed  # bob publishes before sending
    with pytest.raises(errors.SealedRefusedError):  # the old key: kept, not sent identified
        alice.send(BOB, "old key")
    # The new key comes with bob's next message to alice; the kept message then goes sealed.
    bob.send(ALICE, "the new key comes with this")
    alice.receive()
    assert alice.flush_outbox() == 1 and alice.store.outgoing() == [] and texts(bob.receive()) == ["old key"]


def test_wrong_access_key_is_refused_and_nothing_is_stored(make_client, relay):
    alice, bob = make_client("alice"), make_client("bob")
    share(alice, bob)
    bob_id = bob.whoami().account_id
    unauth = AnonymousRelay(relay.url)
    for key in (b"\x00" * 16, proto.access_key(bytes(32)), None):
        with pytest.raises(errors.RelayRefusedError) as exc:
            unauth.send_sealed(bob_id, "ab" * 16, [(1, b"\x01\x02" + bytes(2046))], key)
        assert (exc.value.status, exc.value.relay_code) == (401, "access_denied")
    assert envelope_sizes(relay) == []


# --- forged, expired and mismatched certificates ---


def capture(client: Client) -> list:
    """Make `client`'s sealed deliveries stop at the client: the identified batches."""
    batches: list = []
    client.sealed().deliver = lambda batch: batches.append(batch) or True
    return batches


def relay_key(relay) -> Ed25519PrivateKey:
    return load_or_create_keys(Path(relay.data_dir) / KEYS_FILE)[-1]


def post_sealed(relay, recipient: Client, batch, certificate: bytes) -> None:
    from imsg.protocol import envelope as env

    account = recipient.store.load_account()
    devices = verify_device_list(account.device_list, account.account_public)
    sealed = []
    for device_id, body in batch.envelopes:
        inner = env.Envelope.decode(body)
        sealed.append(
            (
                device_id,
                proto.seal_envelope(
                    Address(account.account_id, device_id),
                    devices.device(device_id).sealed_key,
                    certificate,
                    inner.session_message,
                    inner.content_ciphertext,
                ),
            )
        )
    AnonymousRelay(relay.url).send_sealed(
        account.account_id, batch.message_id, sealed, proto.access_key(account.profile_key)
    )


def certificate_for(key, who: Client, *, expires_in_ms: int = 3_600_000, identity: bytes | None = None) -> bytes:
    account = who.store.load_account()
    device = who._device(account)
    return sign_certificate(
        key,
        account.account_id,
        account.device_id,
        encode_key(KEY_X25519, identity or device.identity.public),
        int(time.time() * 1000) + expires_in_ms,
    )


@pytest.mark.parametrize("case", ["expired", "forged", "other_sender", "other_identity_key"])
def test_bad_certificates_are_rejected_without_damage(make_client, relay, case):
    alice, bob, carol = make_client("alice"), make_client("bob"), make_client("carol")
    share(alice, bob)
    share(carol, bob)
    before_sessions = bob.store.load_session(Address(alice.whoami().account_id, 1))
    assert before_sessions is not None  # bob wrote to alice when sharing his profile
    batches = capture(alice)
    alice.send(BOB, "the real one")
    (batch,) = batches
    key = relay_key(relay)
    if case == "expired":
        cert = certificate_for(key, alice, expires_in_ms=-1000)
    elif case == "forged":  # signed by a key the relay never had, under the relay key's id
        forged = Ed25519PrivateKey.generate()
        good = certificate_for(forged, alice)
        cert = good[:1] + proto.relay_key_id(key.public_key().public_bytes_raw()) + good[9:]
    elif case == "other_sender":  # a genuine certificate, but carol's, around alice's message
        cert = certificate_for(key, carol)
    else:  # alice's address with carol's identity key
        cert = certificate_for(key, alice, identity=carol._device(carol.store.load_account()).identity.public)
    post_sealed(relay, bob, batch, cert)
    assert bob.receive() == []
    assert [(p.message_id, p.code) for p in bob.problems] == [(batch.message_id, "rejected")]
    bob.problems.clear()
    # No state changed: no session with alice, nothing stored, the envelope was acked.
    assert bob.store.load_session(Address(alice.whoami().account_id, 1)) == before_sessions
    assert not bob.store.has_message(batch.message_id)
    if case == "other_sender":
        # Certified as carol's and not decrypting: to bob that is carol's broken session, so
        # he sends carol a retry receipt (session repair, PROTOCOL.md §5b); carol never sent
        # that message and refuses it. Nothing else moves.
        assert len(envelope_sizes(relay)) == 1
        assert carol.receive() == []
        assert [p.code for p in carol.problems] == ["repair_refused"]
    assert envelope_sizes(relay) == []
    # The same ratchet message under a valid certificate still decrypts: nothing was spent.
    post_sealed(relay, bob, batch, certificate_for(key, alice))
    got = bob.receive()
    assert [(m.id, m.text, m.sender) for m in got] == [(batch.message_id, "the real one", ALICE)]
    assert bob.problems == []


def test_unendorsed_relay_key_swap_is_not_trusted_but_an_endorsed_rotation_is(make_client, relay, tmp_path):
    alice, bob = make_client("alice"), make_client("bob")
    share(alice, bob)
    # An endorsed rotation (imsg-relay rotate-sealed-key): bob follows it.
    from imsg_relay.sealed import rotate_keys

    keys = rotate_keys(Path(relay.data_dir) / KEYS_FILE)
    relay.server.config.app.state.relay._sealed_keys = None  # what a restart does
    batches = capture(alice)
    alice.send(BOB, "under the new key")
    post_sealed(relay, bob, batches.pop(), certificate_for(keys[-1], alice))
    assert texts(bob.receive()) == ["under the new key"] and bob.problems == []
    assert len(bob.sealed().trusted_relay_keys()) == 2
    # A key the relay serves without an endorsement from a trusted one: certificates fail.
    (Path(relay.data_dir) / KEYS_FILE).write_text(Ed25519PrivateKey.generate().private_bytes_raw().hex() + "\n")
    relay.server.config.app.state.relay._sealed_keys = None
    swapped = load_or_create_keys(Path(relay.data_dir) / KEYS_FILE)[-1]
    alice.send(BOB, "under a swapped key")
    batch = batches.pop()
    post_sealed(relay, bob, batch, certificate_for(swapped, alice))
    assert bob.receive() == [] and [p.code for p in bob.problems] == ["rejected"]
    assert "does not trust" in bob.problems[0].message


# --- every existing delivery property, sealed ---


def test_sealed_fan_out_409_refetch_and_sync_copies(make_client, relay, tmp_path):
    from integration import test_devices

    test_devices._HOMES[:] = [tmp_path / "homes"]
    alice, bob = make_client("alice"), make_client("bob")
    alice2, _ = test_devices.link(make_client, relay, alice, "alice2")
    share(alice, bob)
    bob2, _ = test_devices.link(make_client, relay, bob, "bob2")  # alice still has bob's old list
    statuses = []
    real = AnonymousRelay.send_sealed

    def spy(self, *args, **kwargs):
        try:
            out = real(self, *args, **kwargs)
            statuses.append(200)
            return out
        except errors.RelayRefusedError as exc:
            statuses.append(exc.status)
            raise

    AnonymousRelay.send_sealed = spy
    try:
        sent = alice.send(BOB, "to both of bob's devices")
    finally:
        AnonymousRelay.send_sealed = real
    assert statuses == [409, 200, 200] and sent.sealed and sent.devices == 2  # the last: the sync copy
    for b in (bob, bob2):
        got = b.receive()
        assert [(m.id, m.text, m.sender) for m in got][-1] == (sent.id, "to both of bob's devices", ALICE)
    alice2.receive()  # the sync copy (sealed too since issue 12)
    assert [m.text for m in alice2.history(BOB)][-1] == "to both of bob's devices"


def test_sealed_outbox_resend_and_dedup(make_client, relay, monkeypatch):
    alice, bob = make_client("alice"), make_client("bob")
    share(alice, bob)
    real = AnonymousRelay.send_sealed
    calls = []

    def flaky(self, *args, **kwargs):
        calls.append(args[1])
        if len(calls) == 1:
            raise errors.RelayUnavailableError("relay at test unreachable (ConnectError)")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(AnonymousRelay, "send_sealed", flaky)
    with pytest.raises(errors.RelayUnavailableError):
        alice.send(BOB, "queued")
    assert len(alice.store.outgoing()) == 1
    nxt = alice.send(BOB, "next")
    assert nxt.sealed and alice.store.outgoing() == []
    # The relay de-duplicates a sealed batch sent twice; bob stores each message once.
    batch_id = calls[0]
    got = bob.receive()
    assert texts(got) == ["queued", "next"] and got[0].id == batch_id
    post = capture(alice)
    alice.send(BOB, "twice")
    (batch,) = post
    key = relay_key(relay)
    post_sealed(relay, bob, batch, certificate_for(key, alice))
    post_sealed(relay, bob, batch, certificate_for(key, alice))
    assert len(envelope_sizes(relay)) == 1
    assert texts(bob.receive()) == ["twice"] and bob.receive() == []


def test_sealed_send_wakes_a_long_poll(make_client, relay):
    alice, bob = make_client("alice"), make_client("bob")
    share(alice, bob)
    bob.receive()
    out: dict = {}
    home = Path(bob.store.path).parent

    def wait() -> None:
        with Client.open(home, relay=relay.url) as waiting:  # a store is per thread
            start = time.monotonic()
            out["got"] = waiting.receive(wait=20)
            out["elapsed"] = time.monotonic() - start

    th = threading.Thread(target=wait)
    th.start()
    time.sleep(0.5)
    sent = alice.send(BOB, "wake up")
    th.join(25)
    assert sent.sealed and texts(out["got"]) == ["wake up"] and out["elapsed"] < 5.5


@pytest.mark.parametrize("skew_days", [-3, 3])
def test_a_skewed_sender_clock_still_sends_sealed_and_is_accepted(make_client, relay, tmp_path, skew_days):
    bob = make_client("bob")
    skew = skew_days * 86_400_000
    alice = Client.open(tmp_path / "skewed", relay=relay.url, now_ms=lambda: int(time.time() * 1000) + skew)
    try:
        alice.init(ALICE)
        share(alice, bob)
        for text in ("one", "two"):
            assert alice.send(BOB, text).sealed
        assert texts(bob.receive()) == ["one", "two"] and bob.problems == []
    finally:
        alice.close()


def test_a_restored_device_has_a_sealed_key_and_its_own_certificate(make_client, relay, tmp_path):
    """A backup restore makes a new device (imsg/client/backup.py): it gets a sealed-sender key
    in the signed list, and the old device's certificate in the restored settings is not used."""
    alice, bob = make_client("alice"), make_client("bob")
    share(alice, bob)
    share(bob, alice)
    assert alice.send(BOB, "before the backup").sealed  # alice now holds a certificate
    bob.receive()
    code = alice.backup_on()
    restored = Client.open(tmp_path / "restored", relay=relay.url)
    try:
        restored.backup_restore(ALICE, code, "phone2")
        me = restored.store.load_account()
        entry = verify_device_list(me.device_list, me.account_public).device(me.device_id)
        assert entry.sealed_key == restored._device(me).sealed.public
        sent = restored.send(BOB, "from the restored device")
        assert sent.sealed
        got = bob.receive()
        assert [(m.text, m.sender) for m in got] == [("from the restored device", ALICE)]
        assert [p.code for p in bob.problems] == ["devices_changed"]  # shown, not a failure
        reply = bob.send(ALICE, "to every device of alice")  # 409, refetch, sealed to the new one too
        assert reply.sealed and reply.devices == 2
        assert texts(restored.receive()) == ["to every device of alice"] and restored.problems == []
    finally:
        restored.close()
