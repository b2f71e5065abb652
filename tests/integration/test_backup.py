"""Backups (issue 6) through a real relay: on -> restore on a fresh home as a NEW device ->
the new device reads old history and talks to a contact, the old device keeps working;
`backup off` leaves nothing on the relay (its database and blob files inspected directly);
wrong, mistyped and other people's codes; the relay cannot enrol a device without both the
recovery code and the account key (SECURITY-TESTS 13, 7)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from imsg import errors
from imsg.client import Client
from imsg.client.backup import BACKUP_INTERVAL_MS, STATE_KEY
from imsg.protocol import backup as bk
from imsg.protocol.identity import verify_device_list
from imsg.protocol.session import Address
from imsg.relay_client import RelayClient

ALICE = "alice@example.com"
BOB = "bob@example.com"


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _restore(tmp_path: Path, relay, handle: str, code: str, name: str = "phone2", **kwargs) -> Client:
    c = Client.open(tmp_path / "homes" / name, relay=relay.url, **kwargs)
    c.backup_restore(handle, code, name)
    return c


def _conversation(make_client):
    alice, bob = make_client("alice"), make_client("bob")
    alice.send(BOB, "hello bob")
    assert [m.text for m in bob.receive()] == ["hello bob"]
    bob.send(ALICE, "hi alice")
    assert [m.text for m in alice.receive()] == ["hi alice"]
    return alice, bob


def test_restore_makes_a_new_device_that_reads_history_and_talks(make_client, relay, tmp_path):
    alice, bob = _conversation(make_client)
    alice.verify(BOB, mark=True)
    alice.contacts_add(BOB, nickname="Bobby")
    alice.store.set_setting("retention", "1y")
    code = alice.backup_on()
    assert len(bk.parse_recovery_code(code)) == bk.SECRET_LEN

    new = _restore(tmp_path, relay, ALICE, code)
    me = new.whoami()
    assert me.account_id == alice.whoami().account_id and me.device_id not in (1,)
    assert me.devices == 2
    # Fresh keys: no session, prekey or device key came from the old device.
    old_acct, new_acct = alice.store.load_account(), new.store.load_account()
    assert new_acct.identity_private != old_acct.identity_private
    assert new_acct.signing_private != old_acct.signing_private
    assert new_acct.token != old_acct.token
    assert new_acct.profile_key == old_acct.profile_key and new_acct.account_private == old_acct.account_private
    bob_id = bob.whoami().account_id
    assert alice.store.load_session(Address(bob_id, 1)) is not None
    assert new.store.load_session(Address(bob_id, 1)) is None  # no ratchet state restored
    assert (
        new.store.signed_prekeys()[0].key_id not in [k.key_id for k in alice.store.signed_prekeys()]
        or new.store.signed_prekeys()[0].public != alice.store.signed_prekeys()[0].public
    )
    assert new.store.get_setting("retention") == "1y"
    old_certificate = alice.store.get_setting("sealed.certificate")
    assert old_certificate is not None  # alice sent sealed: a certificate naming device 1
    assert new.store.get_setting("sealed.certificate") != old_certificate  # never carried over
    assert json.loads(new.store.get_setting(STATE_KEY))["secret"]  # backups stay on
    # Old history, contacts with their verification state.
    assert [m.text for m in new.history(BOB)] == ["hello bob", "hi alice"]
    assert [c.state for c in new.contacts()] == ["verified"]
    restored = new.store.contact_by_handle(BOB)
    assert (restored.in_contacts, restored.nickname) == (True, "Bobby")
    assert restored == alice.store.contact_by_handle(BOB)  # every field, profile state included
    assert new.receive() == []  # old messages are not shown again as new

    # New messages both ways, with the new device and the old one.
    new.send(BOB, "from the restored device")
    got = bob.receive()
    assert [m.text for m in got] == ["from the restored device"] and got[0].sender == ALICE
    alice.receive()
    assert alice.history(BOB)[-1].text == "from the restored device"  # sent-message sync
    assert not alice.problems
    bob.send(ALICE, "to all of alice")
    assert [m.text for m in new.receive()] == ["to all of alice"]
    assert [m.text for m in alice.receive()] == ["to all of alice"]
    alice.send(BOB, "old device still sends")
    assert [m.text for m in bob.receive()] == ["old device still sends"]
    new.receive()
    assert new.history(BOB)[-1].text == "old device still sends"
    assert not alice.problems and not new.problems
    # Bob is shown the new device, signed by the same account key: no safety-number change.
    assert [p.code for p in bob.problems] == ["devices_changed"]


def test_backup_off_leaves_nothing_on_the_relay(make_client, relay):
    alice, _ = _conversation(make_client)
    blob_root = relay.data_dir / "blobs"
    before = _files(blob_root) if blob_root.exists() else []
    alice.backup_on()
    db = relay.db()
    account_id = alice.whoami().account_id
    ((blob_id, size),) = db.execute("SELECT blob_id, size FROM backups WHERE account_id = ?", (account_id,))
    added = [p for p in _files(blob_root) if p not in before]
    assert [p.name for p in added] == [blob_id] and added[0].stat().st_size == size
    alice.backup_now()  # replaces: still one row, one file
    ((blob_id2,),) = db.execute("SELECT blob_id FROM backups WHERE account_id = ?", (account_id,))
    assert blob_id2 != blob_id and [p.name for p in _files(blob_root) if p not in before] == [blob_id2]
    assert alice.backup_off() is True
    assert db.execute("SELECT count(*) FROM backups").fetchone() == (0,)
    assert [p for p in _files(blob_root) if p not in before] == []
    assert alice.backup_status().on is False and alice.backup_status().relay_size is None
    assert alice.backup_off() is False  # idempotent


def test_backup_is_ciphertext_of_padded_length_and_holds_no_secrets(make_client, relay):
    alice, _ = _conversation(make_client)
    code = alice.backup_on()
    ((blob_id, size),) = relay.db().execute("SELECT blob_id, size FROM backups")
    raw = next(p for p in _files(relay.data_dir / "blobs") if p.name == blob_id).read_bytes()
    account = alice.store.load_account()
    for secret in (
        account.account_private,
        account.profile_key,
        b"hello bob",
        ALICE.encode(),
        base64.b64encode(account.account_private),
    ):
        assert secret not in raw
    assert raw.startswith(bk.MAGIC) and len(raw) == size
    assert len(raw) - bk.HEADER_LEN - 16 == bk.padded_length(len(raw) - bk.HEADER_LEN - 16)
    secret = bk.parse_recovery_code(code)
    assert (
        hashlib.sha256(bk.access_token(secret)).digest()
        == relay.db().execute("SELECT access_hash FROM backups").fetchone()[0]
    )
    # The relay holds the access hash; neither the code nor the backup key is derivable from it.
    assert secret not in raw and bk.access_token(secret) not in raw


def test_wrong_or_mistyped_code_is_a_clear_error_and_leaves_the_home_empty(make_client, relay, tmp_path):
    alice, _ = _conversation(make_client)
    code = alice.backup_on()
    home = tmp_path / "homes" / "phone2"
    mistyped = code[:5] + ("X" if code[5] != "X" else "Y") + code[6:]
    with Client.open(home, relay=relay.url) as c:
        with pytest.raises(errors.UsageError, match="checksum"):
            c.backup_restore(ALICE, mistyped)
        with pytest.raises(errors.UsageError, match="36 characters"):
            c.backup_restore(ALICE, code[:-5])
        with pytest.raises(errors.UsageError, match="cannot appear"):
            c.backup_restore(ALICE, code.replace(code[0], "U", 1))
        other = bk.recovery_code(os.urandom(bk.SECRET_LEN))  # well-formed, not anyone's
        with pytest.raises(errors.RelayRefusedError, match="no backup") as info:
            c.backup_restore(ALICE, other)
        assert info.value.exit_code == 5
        with pytest.raises(errors.UsageError, match="another handle"):
            c.backup_restore(BOB, code)
        assert c.store.load_account() is None and c.store.contacts() == [] and c.store.settings() == {}
    assert relay.db().execute("SELECT count(*) FROM devices").fetchone() == (2,)  # nobody enrolled
    # The same home then restores with the right code, typed loosely.
    with Client.open(home, relay=relay.url) as c:
        c.backup_restore(ALICE, code.lower().replace("-", " "))
        assert [m.text for m in c.history(BOB)] == ["hello bob", "hi alice"]


def test_tampered_backup_is_a_security_error_and_nothing_is_enrolled(make_client, relay, tmp_path):
    alice, _ = _conversation(make_client)
    code = alice.backup_on()
    ((blob_id,),) = relay.db().execute("SELECT blob_id FROM backups")
    path = next(p for p in _files(relay.data_dir / "blobs") if p.name == blob_id)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with Client.open(tmp_path / "homes" / "phone2", relay=relay.url) as c:
        with pytest.raises(errors.SecurityError) as info:
            c.backup_restore(ALICE, code)
        assert info.value.exit_code == 6
        assert c.store.load_account() is None
    assert relay.db().execute("SELECT count(*) FROM devices").fetchone() == (2,)


def test_relay_enrols_only_with_the_access_token_and_an_account_key_signature(make_client, relay):
    alice, _ = _conversation(make_client)
    code = alice.backup_on()
    secret = bk.parse_recovery_code(code)
    account = alice.store.load_account()
    current = verify_device_list(account.device_list, account.account_public)
    device_id, device_list = alice._list_with_device(
        account.account_private, current, os.urandom(32), os.urandom(32), "x"
    )
    token = os.urandom(32)
    token_b64 = base64.urlsafe_b64encode(token).rstrip(b"=").decode()
    now = int(time.time() * 1000)

    def signed(key: bytes, at: int = now, dev: int = device_id) -> bytes:
        return bk.sign_restore(key, bk.restore_statement(account.account_id, dev, token, device_list, at))

    access = base64.urlsafe_b64encode(bk.access_token(secret)).rstrip(b"=").decode()
    wrong_access = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
    with RelayClient(relay.url, wrong_access) as r:  # the account key alone: no
        with pytest.raises(errors.RelayRefusedError) as info:
            r.restore_device(
                device_id,
                token=token_b64,
                device_list=device_list,
                signed_at=now,
                signature=signed(account.account_private),
            )
        assert info.value.status == 404
    with RelayClient(relay.url, access) as r:
        stale = now - 6 * 60_000
        for at, bad in (
            (now, signed(os.urandom(32))),  # the code alone, with another key: no
            (now, signed(account.account_private, dev=device_id + 1)),  # for another id
            (stale, signed(account.account_private, at=stale)),
        ):  # stale
            with pytest.raises(errors.RelayRefusedError) as info:
                r.restore_device(device_id, token=token_b64, device_list=device_list, signed_at=at, signature=bad)
            assert info.value.status == 401
        assert relay.db().execute(
            "SELECT count(*) FROM devices WHERE account_id = ?", (account.account_id,)
        ).fetchone() == (1,)
        r.restore_device(
            device_id,
            token=token_b64,
            device_list=device_list,
            signed_at=now,
            signature=signed(account.account_private),
        )
        with pytest.raises(errors.RelayRefusedError) as info:  # a replay: the id is taken
            r.restore_device(
                device_id,
                token=token_b64,
                device_list=device_list,
                signed_at=now,
                signature=signed(account.account_private),
            )
        assert info.value.status == 409
    assert relay.db().execute(
        "SELECT count(*) FROM devices WHERE account_id = ?", (account.account_id,)
    ).fetchone() == (2,)


def test_automatic_backup_runs_in_receive_once_a_day(make_client, relay):
    alice, bob = _conversation(make_client)
    clock = [int(time.time() * 1000)]
    alice._now = lambda: clock[0]
    alice.backup_on()
    first = alice.backup_status()
    bob.send(ALICE, "later")
    alice.receive()
    assert alice.backup_status().last_at == first.last_at  # not due yet
    clock[0] += BACKUP_INTERVAL_MS + 1
    alice.receive()
    status = alice.backup_status()
    assert status.last_at == clock[0] and status.relay_updated_at is not None


def test_a_failed_automatic_backup_is_a_problem_not_a_failed_receive(tmp_path):
    from tests.conftest import start_thread_relay

    small = start_thread_relay(tmp_path / "small-relay", max_backup=4096)  # below any backup
    try:
        alice = Client.open(tmp_path / "a", relay=small.url)
        bob = Client.open(tmp_path / "b", relay=small.url)
        alice.init(ALICE)
        bob.init(BOB)
        with pytest.raises(errors.RelayRefusedError) as info:
            alice.backup_on()
        assert info.value.status == 413 and alice.backup_status().on is False  # nothing changed
        secret = os.urandom(bk.SECRET_LEN)
        alice.store.set_setting(STATE_KEY, json.dumps({"secret": base64.b64encode(secret).decode(), "last_at": 0}))
        bob.send(ALICE, "still delivered")
        assert [m.text for m in alice.receive()] == ["still delivered"]
        assert [p.code for p in alice.problems] == ["backup_failed"]
        attempt = json.loads(alice.store.get_setting(STATE_KEY))
        assert attempt["last_error"] and attempt["last_attempt_at"] > 0
        alice.problems.clear()
        alice.receive()  # retried after an hour, not on every receive
        assert alice.problems == [] and json.loads(alice.store.get_setting(STATE_KEY)) == attempt
        alice.close()
        bob.close()
    finally:
        small.stop()


def test_backup_on_needs_the_account_key_and_is_not_turned_on_twice(make_client, relay):
    alice, _ = _conversation(make_client)
    alice.backup_on()
    with pytest.raises(errors.LocalStateError, match="already on"):
        alice.backup_on()
    alice.backup_off()
    with pytest.raises(errors.LocalStateError, match="off"):
        alice.backup_now()


def test_restored_device_saves_an_attachment_sent_before_the_backup(make_client, relay, tmp_path):
    """Attachment records (blob id, key, digest) come back: the file is still on the relay
    (30 days), so the new device downloads, checks and decrypts it."""
    alice, bob = make_client("alice"), make_client("bob")
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(os.urandom(150_000))
    sent = bob.send(ALICE, "a photo", attachments=[photo])
    (got,) = alice.receive()
    assert got.id == sent.id and [a.name for a in got.attachments] == ["photo.jpg"]
    alice.save_attachments(got.id, tmp_path / "alice-out")  # saved paths stay on the old device
    code = alice.backup_on()
    new = _restore(tmp_path, relay, ALICE, code)
    (m,) = [m for m in new.history(BOB) if m.id == sent.id]
    assert [(a.name, a.saved_path) for a in m.attachments] == [("photo.jpg", "")]
    (path,) = new.save_attachments(sent.id, tmp_path / "new-out")
    assert path.read_bytes() == photo.read_bytes()


def test_old_device_first_then_new_one_no_forked_session(make_client, relay, tmp_path):
    """SECURITY-TESTS 13: restore, the old device sends, then the new one; every message
    decrypts once, on every device (sent messages synced both ways), nothing is rejected."""
    alice, bob = _conversation(make_client)
    code = alice.backup_on()
    new = _restore(tmp_path, relay, ALICE, code)
    # The restored device announced itself: at its next receive the old device knows it.
    assert alice.receive() == [] and alice.whoami().devices == 2
    for sender, text in ((alice, "old first"), (new, "new second"), (alice, "old third"), (new, "new fourth")):
        sender.send(BOB, text)
    assert [m.text for m in bob.receive()] == ["old first", "new second", "old third", "new fourth"]
    bob.send(ALICE, "reply")
    assert [m.text for m in alice.receive()] == ["reply"] and [m.text for m in new.receive()] == ["reply"]
    assert (
        [m.text for m in alice.history(BOB)][-5:]
        == [m.text for m in new.history(BOB)][-5:]
        == ["old first", "new second", "old third", "new fourth", "reply"]
    )
    assert alice.problems == [] and new.problems == []
    assert {p.code for p in bob.problems} <= {"devices_changed"}
