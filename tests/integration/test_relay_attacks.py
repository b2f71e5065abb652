"""The client against a malicious relay (SECURITY-TESTS, threat model "a malicious relay").

The relay is real; the attacks are made the way its operator would make them: by writing to
its SQLite database (tables in imsg_relay/storage/sqlite.py) while it runs.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import time

import pytest

from imsg import errors
from imsg.protocol import session as sess
from imsg.protocol.identity import AccountKey, DeviceKeys, DeviceList, decode_device_list
from imsg.relay_client import RelayClient


def _now_ms() -> int:
    return time.time_ns() // 1_000_000  # rows older than the retention are never served


def texts(messages) -> list[str]:
    return [m.text for m in messages]


def _relay_token_hash(token: str) -> bytes:
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    return hashlib.sha256(raw).digest()


def inject_device(relay, account_id: str, device_id: int = 2, device_list: bytes | None = None) -> str:
    """The operator adds a device of its own to an account (a row in `devices`), and
    optionally replaces the account's device list. Returns the new device's token."""
    token = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
    with relay.db() as db:
        db.execute("INSERT INTO devices VALUES (?, ?, ?, ?)", (account_id, device_id, _relay_token_hash(token), 0))
        if device_list is not None:
            db.execute("UPDATE accounts SET device_list = ? WHERE account_id = ?", (device_list, account_id))
    return token


def publish_prekeys_as(relay_url: str, token: str, device: DeviceKeys) -> None:
    """The injected device publishes prekeys signed by its own device key, so a careless
    client could start a session with it."""
    from imsg.protocol.encoding import KEY_MLKEM768, KEY_X25519, encode_key
    from imsg.protocol.prekeys import KemPreKey, OneTimePreKey, SignedPreKey

    spk = SignedPreKey.generate(device, 1, 0, os.urandom)
    kpk = KemPreKey.generate(device, 2, 0, os.urandom, last_resort=True)
    otk = OneTimePreKey.generate(3, os.urandom)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    with RelayClient(relay_url, token) as rc:
        rc.publish_keys(
            {
                "signed_prekey": {
                    "key_id": 1,
                    "public_key": b64(encode_key(KEY_X25519, spk.public)),
                    "signature": b64(spk.signature),
                },
                "kem_last_resort": {
                    "key_id": 2,
                    "public_key": b64(encode_key(KEY_MLKEM768, kpk.public)),
                    "signature": b64(kpk.signature),
                },
                "one_time": [{"key_id": 3, "public_key": b64(encode_key(KEY_X25519, otk.public))}],
            }
        )


def attacker_list(victim_list: bytes, *, attacker: AccountKey, name_victim_key: bool) -> tuple[bytes, DeviceKeys]:
    """The victim's devices plus an attacker device, signed by an attacker key. With
    `name_victim_key`, the list claims to be the victim's (names the victim's account key)."""
    genuine, _, _ = decode_device_list(victim_list)
    rogue = DeviceKeys.generate(2, os.urandom)
    forged = DeviceList(
        genuine.account_key if name_victim_key else attacker.public,
        genuine.serial + 1,
        genuine.signed_at + 1,
        genuine.devices + (rogue.entry(0),),
    )
    return attacker.sign_device_list(forged), rogue


@pytest.fixture
def count_initiations(monkeypatch):
    """Every session the client starts, by (account id, device id)."""
    calls: list[tuple[str, int]] = []
    real = sess.initiate

    def spy(local, local_address, remote_address, *args, **kwargs):
        calls.append((remote_address.account_id, remote_address.device_id))
        return real(local, local_address, remote_address, *args, **kwargs)

    monkeypatch.setattr(sess, "initiate", spy)
    return calls


def _envelope_devices(relay, account_id: str) -> list[int]:
    with relay.db() as db:
        return [r[0] for r in db.execute("SELECT device_id FROM envelopes WHERE account_id = ?", (account_id,))]


# --- device injection (SECURITY-TESTS 4, the Matrix homeserver attack) ---


@pytest.mark.parametrize("variant", ["rows_only", "unsigned_list", "attacker_signed_list"])
def test_relay_device_injection_existing_session(make_client, relay, count_initiations, variant):
    alice, bob = make_client("alice"), make_client("bob")
    bob_id = bob.whoami().account_id
    alice.send("bob@example.com", "before")
    assert texts(bob.receive()) == ["before"]
    count_initiations.clear()

    account = bob.store.load_account()
    new_list = None
    rogue = DeviceKeys.generate(2, os.urandom)
    if variant == "unsigned_list":  # names bob's key, signature by nobody
        new_list, rogue = attacker_list(
            account.device_list, attacker=AccountKey.generate(os.urandom), name_victim_key=True
        )
        new_list = new_list[:-64] + bytes(64)
    elif variant == "attacker_signed_list":
        new_list, rogue = attacker_list(
            account.device_list, attacker=AccountKey.generate(os.urandom), name_victim_key=True
        )
    token = inject_device(relay, bob_id, 2, new_list)
    publish_prekeys_as(relay.url, token, rogue)

    with pytest.raises(errors.SecurityError) as exc:
        alice.send("bob@example.com", "secret for bob only")
    assert exc.value.exit_code == 6
    assert (bob_id, 2) not in count_initiations  # 0 encryptions to the injected device
    assert 2 not in _envelope_devices(relay, bob_id)
    assert alice.store.outgoing() == []  # not queued for a retry that would fail the same way
    # Receiving still works, and so does talking to others.
    bob.send("alice@example.com", "bob is still reachable inbound")
    assert texts(alice.receive()) == ["bob is still reachable inbound"]


@pytest.mark.parametrize("name_victim_key", [True, False])
def test_relay_device_injection_first_contact(make_client, relay, count_initiations, name_victim_key):
    """Alice has never talked to bob: the relay serves a list with its own device."""
    bob = make_client("bob")
    bob_id = bob.whoami().account_id
    forged, rogue = attacker_list(
        bob.store.load_account().device_list, attacker=AccountKey.generate(os.urandom), name_victim_key=name_victim_key
    )
    token = inject_device(relay, bob_id, 2, forged)
    publish_prekeys_as(relay.url, token, rogue)
    alice = make_client("alice")
    with pytest.raises(errors.UntrustedIdentityError) as exc:
        alice.send("bob@example.com", "secret")
    assert exc.value.exit_code == 6
    assert count_initiations == []
    assert _envelope_devices(relay, bob_id) == []
    assert alice.store.get_contact(bob_id) is None  # nothing pinned from a forged list


def test_relay_injects_a_device_into_alices_own_account(make_client, relay, count_initiations):
    """A note to self: the relay adds a device to alice's own account."""
    alice = make_client("alice")
    me = alice.whoami().account_id
    token = inject_device(relay, me, 2)
    publish_prekeys_as(relay.url, token, DeviceKeys.generate(2, os.urandom))
    try:
        alice.send("alice@example.com", "note to self")
    except errors.SecurityError as exc:
        assert exc.exit_code == 6
    except errors.RelayRefusedError:
        pass  # refused for the device mismatch: also no encryption to the rogue device
    assert (me, 2) not in count_initiations
    assert _envelope_devices(relay, me) == []


def test_relay_swaps_the_account_key(make_client, relay):
    """The relay serves another key (and a list that key signs) for bob's account id. Ids
    derive from keys, so the swap is detected."""
    bob = make_client("bob")
    bob_id = bob.whoami().account_id
    evil = AccountKey.generate(os.urandom)
    rogue = DeviceKeys.generate(1, os.urandom)
    evil_list = evil.sign_device_list(DeviceList(evil.public, 2, 1, (rogue.entry(0),)))
    with relay.db() as db:
        db.execute(
            "UPDATE accounts SET account_key = ?, device_list = ? WHERE account_id = ?",
            (b"\x06" + evil.public, evil_list, bob_id),
        )
    alice = make_client("alice")
    with pytest.raises(errors.UntrustedIdentityError, match="does not match the account"):
        alice.send("bob@example.com", "secret")
    assert _envelope_devices(relay, bob_id) == []


# --- tampering, replay ---


def _bodies(relay, account_id: str) -> list[tuple[int, str, bytes]]:
    with relay.db() as db:
        return db.execute(
            "SELECT seq, message_id, body FROM envelopes WHERE account_id = ? ORDER BY seq", (account_id,)
        ).fetchall()


def _flip(relay, seq: int, positions: list[int]) -> None:
    with relay.db() as db:
        (body,) = db.execute("SELECT body FROM envelopes WHERE seq = ?", (seq,)).fetchone()
        b = bytearray(body)
        for p in positions:
            b[p % len(b)] ^= 0x01
        db.execute("UPDATE envelopes SET body = ? WHERE seq = ?", (bytes(b), seq))


# Envelope = version(1) | kind(1) | sender account(16) | sender device(4) | var(session msg) | content
@pytest.mark.parametrize(
    "where",
    [
        "session_header",
        "session_body",
        "content",
        "last_byte",
        "sender_device",
        "sender_account",
    ],
)
@pytest.mark.parametrize("first", [True, False], ids=["prekey_msg", "ratchet_msg"])
def test_tampered_envelope_is_rejected_acked_and_the_session_survives(make_client, relay, where, first):
    alice, bob = make_client("alice"), make_client("bob")
    bob_id = bob.whoami().account_id
    if not first:
        alice.send("bob@example.com", "warm-up")
        assert texts(bob.receive()) == ["warm-up"]
        bob.send("alice@example.com", "ack")
        alice.receive()
    alice.send("bob@example.com", "tampered in transit")
    [(seq, mid, body)] = _bodies(relay, bob_id)
    pos = {
        "sender_account": [5],
        "sender_device": [21],
        "session_header": [30],
        "session_body": [len(body) // 3],
        "content": [len(body) - 40],
        "last_byte": [len(body) - 1],
    }[where]
    _flip(relay, seq, pos)
    got = bob.receive()
    assert got == []
    assert [(p.message_id, p.code) for p in bob.problems] == [(mid, "rejected")]
    bob.problems.clear()
    assert _bodies(relay, bob_id) == []  # acked: it can never become readable
    assert not bob.store.has_message(mid)
    # The genuine next message still decrypts.
    alice.send("bob@example.com", "genuine")
    assert texts(bob.receive()) == ["genuine"]
    assert bob.problems == []
    bob.send("alice@example.com", "reply")
    assert texts(alice.receive()) == ["reply"]


def test_replayed_envelope_gives_at_most_one_plaintext(make_client, relay):
    alice, bob = make_client("alice"), make_client("bob")
    bob_id = bob.whoami().account_id
    alice.send("bob@example.com", "first (prekey message)")
    alice.send("bob@example.com", "second")
    rows = _bodies(relay, bob_id)
    assert texts(bob.receive()) == ["first (prekey message)", "second"]
    # The relay replays both: once under their own ids, once under fresh ids.
    with relay.db() as db:
        for _, mid, body in rows:
            for new_id in (mid, secrets.token_hex(16)):
                db.execute(
                    "INSERT INTO envelopes (account_id, device_id, message_id, body, received_at)"
                    " VALUES (?, 1, ?, ?, ?)",
                    (bob_id, new_id, body, _now_ms()),
                )
    assert bob.receive() == []
    assert _bodies(relay, bob_id) == []  # all acked
    assert all(p.code in ("duplicate", "rejected") for p in bob.problems)
    assert len(bob.problems) == 2  # the fresh ids; same ids are recognised silently
    assert texts(bob.history("alice@example.com")) == ["first (prekey message)", "second"]
    # After a restart (used keys deleted and persisted) a replay still gives nothing.
    bob.close()
    bob = make_client("bob")
    with relay.db() as db:
        for _, _mid, body in rows:
            db.execute(
                "INSERT INTO envelopes (account_id, device_id, message_id, body, received_at) VALUES (?, 1, ?, ?, ?)",
                (bob_id, secrets.token_hex(16), body, _now_ms()),
            )
    assert bob.receive() == []
    assert len(bob.history("alice@example.com")) == 2
    alice.send("bob@example.com", "third")
    assert texts(bob.receive()) == ["third"]


def test_reflected_envelope_is_rejected(make_client, relay):
    """Alice's own ciphertext to bob, put in alice's mailbox."""
    alice, bob = make_client("alice"), make_client("bob")
    alice_id = alice.whoami().account_id
    alice.send("bob@example.com", "to bob")
    [(_, mid, body)] = _bodies(relay, bob.whoami().account_id)
    with relay.db() as db:
        db.execute(
            "INSERT INTO envelopes (account_id, device_id, message_id, body, received_at) VALUES (?, 1, ?, ?, ?)",
            (alice_id, mid, body, _now_ms()),
        )
    assert alice.receive() == []  # stored already as outgoing: never shown as incoming
    with relay.db() as db:
        db.execute(
            "INSERT INTO envelopes (account_id, device_id, message_id, body, received_at) VALUES (?, 1, ?, ?, ?)",
            (alice_id, secrets.token_hex(16), body, _now_ms()),
        )
    assert alice.receive() == []
    assert [m.direction for m in alice.history("bob@example.com")] == ["out"]
    assert texts(bob.receive()) == ["to bob"]


# --- what the relay learns ---


def _scan(paths, needles: dict[str, bytes]) -> list[tuple[str, str]]:
    found = []
    for path in paths:
        if not os.path.exists(path):
            continue
        data = open(path, "rb").read()
        for label, needle in needles.items():
            if needle and needle in data:
                found.append((os.path.basename(path), label))
    return found


def _needles(secrets_: dict[str, str]) -> dict[str, bytes]:
    out = {}
    for label, text in secrets_.items():
        raw = text.encode()
        out[label] = raw
        out[label + " (hex)"] = raw.hex().encode()
        out[label + " (b64)"] = base64.b64encode(raw)
        out[label + " (utf-16)"] = text.encode("utf-16-le")
    return out


def test_relay_database_and_log_hold_no_plaintext_handle_name_or_token(make_client, relay_proc):
    alice = make_client("alice", relay_url=relay_proc.url)
    bob = make_client("bob", "+15557654321", relay_url=relay_proc.url)
    alice.send("+15557654321", "Meet me at the old oak tree at dawn")
    alice.send("+15557654321", "Bring the blue umbrella")
    # One message stays undelivered, so ciphertext sits in the database during the scan.
    got = bob.receive()
    assert texts(got) == ["Meet me at the old oak tree at dawn", "Bring the blue umbrella"]
    bob.send("alice@example.com", "Confirmed: oak tree, dawn")
    alice.send("+15557654321", "Undelivered secret rendezvous")
    alice.receive()

    tokens = {"alice token": alice.store.load_account().token, "bob token": bob.store.load_account().token}
    needles = _needles(
        {
            "text 1": "old oak tree",
            "text 2": "blue umbrella",
            "text 3": "Confirmed: oak",
            "text 4": "secret rendezvous",
            "alice handle": "alice@example.com",
            "bob handle": "+15557654321",
            "bob digits": "5557654321",
            "alice name": "Alice",
            **tokens,
        }
    )
    for t in tokens.values():  # the raw token bytes too
        needles[t[:8] + "… (raw)"] = base64.urlsafe_b64decode(t + "=")
    db = str(relay_proc.db_path)
    assert os.path.exists(db)
    found = _scan([db, db + "-wal", db + "-journal", db + "-shm"], needles)
    assert found == [], f"the relay database holds {found}"

    # scripts/relay_db_report.py agrees (it also walks every table and column).
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "relay_db_report.py"
    report = subprocess.run(
        [
            sys.executable,
            str(script),
            db,
            "--absent",
            "old oak tree",
            "--absent",
            "alice@example.com",
            "--absent",
            "+15557654321",
            "--absent",
            "Alice",
            "--absent",
            "secret rendezvous",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert report.returncode == 0, report.stdout + report.stderr
    assert "envelopes" in report.stdout

    alice.close()
    bob.close()
    assert relay_proc.stop() == 0
    log = relay_proc.log()
    assert log.strip(), "the relay logged nothing at all (was stderr captured?)"
    for label, needle in {**needles, "loopback address": b"127.0.0.1"}.items():
        assert needle.decode("latin-1") not in log, f"the relay log holds the {label}"
    assert not re.search(r"Authorization|Bearer", log, re.I)
