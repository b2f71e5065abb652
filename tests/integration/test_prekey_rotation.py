"""Prekeys against a real relay with an injected clock: the last-resort ML-KEM prekey
rotates like the signed prekey and a replaced one's private key is deleted after the grace
period; one-time prekeys are refilled whenever the relay reports them low, even when no
prekey message came (a drain by bundle fetches alone)."""

from __future__ import annotations

from imsg.client import Client
from imsg.client.delivery import parse_bundle
from imsg.protocol import consts

DAY = 24 * 3600 * 1000


class Clock:
    def __init__(self, start: int = 1_800_000_000_000):
        self.now = start

    def __call__(self) -> int:
        return self.now


def _open(tmp_path, relay, name: str, clock: Clock) -> Client:
    client = Client.open(tmp_path / name, relay=relay.url, now_ms=clock)
    if client.store.load_account() is None:
        client.init(f"{name}@example.com", name=name.capitalize())
    return client


def _last_resort_ids(client: Client) -> list[int]:
    store = client.store
    return [k for k in store.kem_prekey_ids() if (key := store.get_kem_prekey(k)) and key.last_resort]


def _served_kem(drainer: Client, account_id: str):
    """Take one bundle as a new initiator would: the KEM prekey the relay hands out."""
    return parse_bundle(drainer.relay().fetch_bundles(account_id)[0])


def test_one_time_prekeys_refill_after_a_drain_that_sent_no_message(tmp_path, relay):
    clock = Clock()
    bob, drainer = _open(tmp_path, relay, "bob", clock), _open(tmp_path, relay, "drainer", clock)
    bob_id = bob.whoami().account_id
    for _ in range(consts.ONE_TIME_PREKEY_BATCH - consts.ONE_TIME_PREKEY_REFILL_BELOW + 1):
        drainer.relay().fetch_bundles(bob_id)
    assert bob.relay().key_count()["one_time"] < consts.ONE_TIME_PREKEY_REFILL_BELOW
    assert bob.receive() == []  # nothing arrived, no prekey used: the count alone decides
    counts = bob.relay().key_count()
    assert counts["one_time"] >= consts.ONE_TIME_PREKEY_REFILL_BELOW
    assert counts["kem_one_time"] >= consts.ONE_TIME_PREKEY_REFILL_BELOW


def test_last_resort_kem_prekey_rotates_and_the_old_one_is_deleted_after_the_grace(tmp_path, relay):
    clock = Clock()
    bob, alice, drainer = (_open(tmp_path, relay, n, clock) for n in ("bob", "alice", "drainer"))
    bob_id = bob.whoami().account_id
    first = _last_resort_ids(bob)
    assert len(first) == 1
    # Take every one-time KEM key so that bundles show the last-resort one.
    for _ in range(consts.ONE_TIME_PREKEY_BATCH):
        drainer.relay().fetch_bundles(bob_id)
    served = _served_kem(drainer, bob_id)
    assert served.kem_last_resort and served.kem_prekey_id == first[0]

    # A week on: the next receive rotates it (and refills the one-time keys).
    clock.now += consts.SIGNED_PREKEY_ROTATE_MS + 1
    # Alice starts a session now, on the old last-resort key (her bundle is taken before
    # Bob rotates): the message is in flight across the rotation.
    alice.send("bob@example.com", "on the old last-resort key")
    bob.receive()
    second = _last_resort_ids(bob)
    assert len(second) == 2 and second[0] == first[0]  # the old private key is kept for now
    for _ in range(consts.ONE_TIME_PREKEY_BATCH + 1):
        served = _served_kem(drainer, bob_id)
    assert served.kem_last_resort and served.kem_prekey_id == second[1]

    # Within the grace period (30 days from the successor's publication) the old key stays.
    clock.now += consts.SIGNED_PREKEY_KEEP_MS - DAY
    bob.receive()
    assert first[0] in _last_resort_ids(bob)

    # After it (counted from the successor's publication) the old private key is gone.
    clock.now += 2 * DAY
    bob.receive()
    third = _last_resort_ids(bob)
    assert first[0] not in third and bob.store.get_kem_prekey(first[0]) is None
    assert second[1] in third  # and the weekly rotation went on meanwhile
    messages = bob.history("alice@example.com")
    assert [m.text for m in messages] == ["on the old last-resort key"]


def test_a_home_from_before_the_rotation_finds_its_last_resort_key(tmp_path, relay):
    clock = Clock()
    bob = _open(tmp_path, relay, "bob", clock)
    (key_id,) = _last_resort_ids(bob)
    bob.store.set_setting("kem_last_resort_keys", None)  # as a home made before this change
    bob.maintain_prekeys()
    assert bob.store.get_setting("kem_last_resort_keys") == f"{key_id}:{clock.now}"
