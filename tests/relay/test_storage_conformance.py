"""One conformance suite for the relay's `Storage`: every method, on SQLite and on
PostgreSQL, by the same tests (as tests/unit/test_store_conformance.py does for the client's
stores).

PostgreSQL runs on 127.0.0.1:5432 (database `test`, IMSG_TEST_POSTGRES to point elsewhere);
each test gets its own schema, dropped afterwards. Without a reachable server the postgres
half is skipped with the reason. What only one backend has (SQLite's file, its group
commit; PostgreSQL's locking through the app) stays in test_storage.py and test_postgres.py.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from imsg_relay.privacy import SECTIONS
from imsg_relay.storage.base import (
    AccountNotFound,
    BlobNotFound,
    BlobQuotaExceeded,
    ChannelNotFound,
    DeviceMismatch,
    DeviceRef,
    HandleRow,
    OneTimeKey,
    SignedKey,
    Storage,
    StorageConflict,
)
from imsg_relay.storage.sqlite import SQLiteStorage
from imsg_relay.sweeper import sweep, sweep_channels

PG = os.environ.get("IMSG_TEST_POSTGRES", "host=127.0.0.1 port=5432 dbname=test user=postgres")
A, B, C = "a" * 32, "b" * 32, "c" * 32
KEY = b"\x06" + bytes(32)


def _postgres_reason() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return f"postgresql not reachable at {PG!r}: {type(exc).__name__}"
    return None


PG_REASON = _postgres_reason()

Body = Callable[[Storage], Awaitable[Any]]


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param(
            "postgres", marks=[pytest.mark.postgres, pytest.mark.skipif(PG_REASON is not None, reason=PG_REASON or "")]
        ),
    ]
)
def run(request, tmp_path) -> Callable[[Body], Any]:
    """`run(body)`: a fresh, open storage of the parametrised kind, handed to `body` inside
    one event loop, closed afterwards. `run.reopen` (SQLite and PostgreSQL alike) gives the
    same data through a new storage object."""
    schema = f"imsg_test_{secrets.token_hex(6)}"

    def make() -> Storage:
        if request.param == "sqlite":
            return SQLiteStorage(tmp_path / "relay")
        from imsg_relay.storage.postgres import PostgresStorage

        return PostgresStorage(PG, schema=schema, pool_size=4)

    def runner(body: Body) -> Any:
        async def main() -> Any:
            s = make()
            await s.open()
            try:
                return await body(s)
            finally:
                await s.close()

        return asyncio.run(main())

    runner.kind = request.param  # type: ignore[attr-defined]
    yield runner
    if request.param == "postgres":
        import psycopg

        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _token(account_id: str, device_id: int) -> bytes:
    return account_id.encode()[:8] + bytes([device_id]) * 24


def _handle(account_id: str, tag: bytes = b"h" * 32, state: str = "unverified", **over: Any) -> HandleRow:
    fields: dict[str, Any] = dict(
        tag=tag, account_id=account_id, state=state, receiving=True, label=b"label", created_at=0, record=b"record"
    )
    fields.update(over)
    return HandleRow(**fields)


async def _account(s: Storage, account_id: str = A, devices: tuple[int, ...] = (1,), tag: bytes | None = None) -> None:
    first, *rest = devices
    handle = _handle(account_id, tag if tag is not None else account_id.encode()[:32])
    await s.create_account(account_id, KEY, handle, b"list-1", first, _token(account_id, first), 100)
    for d in rest:
        await s.add_device(account_id, d, _token(account_id, d), b"list-%d" % d, 100)


# --- accounts and devices ---


def test_create_account_and_read_it_back(run):
    async def body(s):
        await s.create_account(A, KEY, None, b"list-1", 1, _token(A, 1), 100)
        account = await s.get_account(A)
        assert (account.account_id, account.account_key, account.device_list, account.devices) == (
            A,
            KEY,
            b"list-1",
            (1,),
        )
        assert await s.get_account(B) is None
        assert await s.authenticate(_token(A, 1)) == DeviceRef(A, 1)
        assert await s.authenticate(_token(B, 1)) is None

    run(body)


def test_create_account_conflicts_write_nothing(run):
    async def body(s):
        await _account(s, A, tag=b"t" * 32)
        for account_id, token, tag, code in [
            (A, _token(C, 1), b"u" * 32, "account_exists"),
            (B, _token(A, 1), b"u" * 32, "token_taken"),
            (B, _token(B, 1), b"t" * 32, "handle_taken"),  # an unverified claim of A's handle
        ]:
            with pytest.raises(StorageConflict) as exc:
                await s.create_account(account_id, KEY, _handle(account_id, tag), b"l", 1, token, 100)
            assert exc.value.code == code
        assert await s.get_account(B) is None
        assert await s.account_handles(B) == []
        # A pending claim does not block, and does not take the handle from A
        await s.create_account(B, KEY, _handle(B, b"t" * 32, state="pending"), b"l", 1, _token(B, 1), 100)
        assert [r.account_id for r in await s.account_handles(B)] == [B]

    run(body)


def test_add_device_updates_the_list_and_refuses_conflicts(run):
    async def body(s):
        await _account(s, A)
        await s.add_device(A, 2, _token(A, 2), b"list-2", 200)
        account = await s.get_account(A)
        assert account.devices == (1, 2) and account.device_list == b"list-2"
        assert await s.authenticate(_token(A, 2)) == DeviceRef(A, 2)
        for device_id, token, cap, code in [
            (2, _token(A, 9), None, "device_exists"),
            (3, _token(A, 1), None, "token_taken"),
            (3, _token(A, 3), 2, "too_many_devices"),
        ]:
            with pytest.raises(StorageConflict) as exc:
                await s.add_device(A, device_id, token, b"x", 200, max_devices=cap)
            assert exc.value.code == code
        with pytest.raises(AccountNotFound):
            await s.add_device(B, 1, _token(B, 1), b"x", 200)
        assert (await s.get_account(A)).device_list == b"list-2"  # refusals change nothing
        await s.add_device(A, 3, _token(A, 3), b"list-3", 200, max_devices=3)
        assert (await s.get_account(A)).devices == (1, 2, 3)

    run(body)


def test_concurrent_adds_cannot_pass_the_device_cap(run):
    async def body(s):
        await _account(s, A)
        results = await asyncio.gather(
            *[s.add_device(A, d, _token(A, d), b"l", 200, max_devices=4) for d in range(2, 10)],
            return_exceptions=True,
        )
        assert sum(r is None for r in results) == 3
        assert all(r is None or r.code == "too_many_devices" for r in results)
        assert len((await s.get_account(A)).devices) == 4

    run(body)


def test_remove_device_takes_its_credential_keys_and_mailbox(run):
    async def body(s):
        await _account(s, A, devices=(1, 2))
        await s.put_keys(DeviceRef(A, 2), SignedKey(1, b"s", b"sig"), None, [OneTimeKey(1, b"o")], [])
        await s.store_envelopes(A, "1" * 32, {2: b"x"}, 1, 300)
        await s.remove_device(A, 2, b"list-after")
        account = await s.get_account(A)
        assert account.devices == (1,) and account.device_list == b"list-after"
        assert await s.authenticate(_token(A, 2)) is None
        assert await s.key_counts(DeviceRef(A, 2)) == (await s.key_counts(DeviceRef(B, 9)))
        assert (await s.fetch(DeviceRef(A, 2), 10, 0, 1 << 20)) == ([], False)
        with pytest.raises(AccountNotFound):
            await s.remove_device(A, 2, None)
        await s.add_device(A, 3, _token(A, 3), b"list-3", 300)
        await s.remove_device(A, 3, None)  # no new list: the stored one stays
        assert (await s.get_account(A)).device_list == b"list-3"

    run(body)


# --- prekeys ---


def test_prekeys_counts_and_bundles(run):
    async def body(s):
        await _account(s, A, devices=(1, 2, 3))
        me = DeviceRef(A, 1)
        counts = await s.put_keys(
            me,
            SignedKey(7, b"spk", b"spk-sig"),
            SignedKey(8, b"kem-lr", b"kem-lr-sig"),
            [OneTimeKey(i, b"otk%d" % i) for i in (3, 1, 2)],
            [OneTimeKey(i, b"kem%d" % i, b"ksig%d" % i) for i in (5, 4)],
        )
        assert (counts.one_time, counts.kem_one_time) == (3, 2)
        assert await s.key_counts(me) == counts
        # a key id given again replaces its key; the signed prekey is replaced too
        counts = await s.put_keys(me, SignedKey(9, b"spk2", b"spk2-sig"), None, [OneTimeKey(1, b"otk1b")], [])
        assert (counts.one_time, counts.kem_one_time) == (3, 2)
        await s.put_keys(DeviceRef(A, 2), SignedKey(1, b"two", b"sig2"), None, [], [])
        # device 3 published nothing: it has no bundle
        bundles = await s.take_bundles(A, None)
        assert [b.device_id for b in bundles] == [1, 2]
        first, second = bundles
        assert first.signed_prekey == SignedKey(9, b"spk2", b"spk2-sig")
        assert first.one_time == OneTimeKey(1, b"otk1b", None)  # lowest key id first, served once
        assert first.kem_prekey == SignedKey(4, b"kem4", b"ksig4") and first.kem_last_resort is False
        assert second.one_time is None and second.kem_prekey is None and second.kem_last_resort is False
        taken = [await s.take_bundles(A, 1) for _ in range(3)]
        assert [t[0].one_time.key_id if t[0].one_time else None for t in taken] == [2, 3, None]
        # one-time KEM keys used up: the last-resort key, marked so
        assert [(t[0].kem_prekey.key_id, t[0].kem_last_resort) for t in taken] == [(5, False), (8, True), (8, True)]
        counts = await s.key_counts(me)
        assert (counts.one_time, counts.kem_one_time) == (0, 0)
        with pytest.raises(AccountNotFound):
            await s.take_bundles(B, None)
        with pytest.raises(AccountNotFound):
            await s.take_bundles(A, 9)

    run(body)


def test_concurrent_bundle_fetches_never_share_a_one_time_key(run):
    async def body(s):
        await _account(s, A)
        me = DeviceRef(A, 1)
        await s.put_keys(me, SignedKey(1, b"s", b"s"), None, [OneTimeKey(i, b"o") for i in range(8)], [])
        got = await asyncio.gather(*[s.take_bundles(A, 1) for _ in range(12)])
        served = [b[0].one_time.key_id for b in got if b[0].one_time is not None]
        assert sorted(served) == list(range(8))

    run(body)


# --- mailboxes ---


def test_store_envelopes_checks_devices_and_is_idempotent(run):
    async def body(s):
        await _account(s, A, devices=(1, 2))
        with pytest.raises(DeviceMismatch) as exc:
            await s.store_envelopes(A, "m" * 32, {1: b"x", 3: b"y"}, None, 1)
        assert (exc.value.missing, exc.value.extra) == ([2], [3])
        with pytest.raises(DeviceMismatch) as exc:
            await s.store_envelopes(A, "m" * 32, {1: b"x", 2: b"y"}, 2, 1)  # the sender's own device
        assert (exc.value.missing, exc.value.extra) == ([], [2])
        with pytest.raises(AccountNotFound):
            await s.store_envelopes(C, "m" * 32, {1: b"x"}, None, 1)
        results = await asyncio.gather(*[s.store_envelopes(A, "m" * 32, {1: b"x", 2: b"y"}, None, 1) for _ in range(3)])
        assert results == [2, 2, 2]
        assert await s.store_envelopes(A, "n" * 32, {1: b"z"}, 2, 2) == 1
        msgs, more = await s.fetch(DeviceRef(A, 1), 10, 0, 1 << 20)
        assert [(m.message_id, m.body, m.received_at) for m in msgs] == [("m" * 32, b"x", 1), ("n" * 32, b"z", 2)]
        assert not more
        assert [m.body for m in (await s.fetch(DeviceRef(A, 2), 10, 0, 1 << 20))[0]] == [b"y"]

    run(body)


def test_fetch_is_oldest_first_bounded_and_filters_old_rows(run):
    async def body(s):
        await _account(s, A)
        for i in range(5):
            await s.store_envelopes(A, f"{i:032x}", {1: bytes([i]) * 1000}, None, 1_000 * (i + 1))
        me = DeviceRef(A, 1)
        msgs, more = await s.fetch(me, 3, 0, 1 << 20)
        assert [m.message_id for m in msgs] == [f"{i:032x}" for i in range(3)] and more
        msgs, more = await s.fetch(me, 100, 0, 2500)  # at most 2,500 body bytes
        assert len(msgs) == 2 and more
        msgs, more = await s.fetch(me, 100, 0, 10)  # one envelope even when it alone is over
        assert len(msgs) == 1 and more
        msgs, more = await s.fetch(me, 100, 3_000, 1 << 20)  # received at or after 3,000
        assert [m.received_at for m in msgs] == [3_000, 4_000, 5_000] and not more

    run(body)


def test_ack_deletes_only_the_devices_own_envelopes(run):
    async def body(s):
        await _account(s, A, devices=(1, 2))
        await s.store_envelopes(A, "1" * 32, {1: b"x", 2: b"x"}, None, 1)
        await s.store_envelopes(A, "2" * 32, {1: b"y", 2: b"y"}, None, 1)
        assert await s.ack(DeviceRef(A, 1), ["1" * 32, "1" * 32, "9" * 32]) == 1
        assert await s.ack(DeviceRef(A, 1), ["1" * 32]) == 0  # idempotent
        assert [m.message_id for m in (await s.fetch(DeviceRef(A, 1), 10, 0, 1 << 20))[0]] == ["2" * 32]
        assert len((await s.fetch(DeviceRef(A, 2), 10, 0, 1 << 20))[0]) == 2

    run(body)


def test_delete_expired_and_the_sweep_take_batches(run):
    async def body(s):
        await _account(s, A)
        for i in range(25):
            await s.store_envelopes(A, f"{i:032x}", {1: b"x"}, None, 1_000 + i)
        await s.store_envelopes(A, "f" * 32, {1: b"keep"}, None, 10_000)
        assert await s.delete_expired(1_010, 100) == 10  # received before 1,010
        assert await s.delete_expired(5_000, 4) == 4  # at most `limit`
        assert await sweep(s, cutoff_ms=5_000, batch=5) == 11
        msgs, _ = await s.fetch(DeviceRef(A, 1), 100, 0, 1 << 20)
        assert [m.body for m in msgs] == [b"keep"]

    run(body)


# --- provisioning channels ---


def test_channels_caps_boxes_and_expiry(run):
    async def body(s):
        ch, other = "0" * 16, "1" * 16
        await s.create_channel(ch, A, 0, 1_000, 2)
        with pytest.raises(StorageConflict) as exc:
            await s.create_channel(ch, B, 0, 1_000, 2)
        assert exc.value.code == "channel_exists"
        await s.create_channel(other, A, 0, 500, 2)
        with pytest.raises(StorageConflict) as exc:
            await s.create_channel("2" * 16, A, 0, 1_000, 2)
        assert exc.value.code == "too_many_channels"
        await s.create_channel("2" * 16, A, 600, 1_000, 2)  # `other` expired at 500: no longer counts

        assert await s.put_provisioning(ch, "new", b"a", 10, 2) == 1
        assert await s.put_provisioning(ch, "new", b"b", 10, 2) == 2
        with pytest.raises(StorageConflict) as exc:
            await s.put_provisioning(ch, "new", b"c", 10, 2)
        assert exc.value.code == "box_full"
        assert await s.put_provisioning(ch, "existing", b"e", 10, 2) == 1  # boxes are separate
        assert await s.take_provisioning(ch, "new", 10) == b"a"
        assert await s.take_provisioning(ch, "new", 10) == b"b"
        assert await s.take_provisioning(ch, "new", 10) is None
        for call in (
            s.put_provisioning("9" * 16, "new", b"x", 10, 8),
            s.take_provisioning("9" * 16, "new", 10),
            s.put_provisioning(other, "new", b"x", 600, 8),  # expired
            s.take_provisioning(other, "new", 600),
        ):
            with pytest.raises(ChannelNotFound):
                await call
        assert await s.take_provisioning(ch, "existing", 999) == b"e"
        with pytest.raises(ChannelNotFound):
            await s.take_provisioning(ch, "existing", 1_000)  # expired at 1,000

    run(body)


def test_concurrent_puts_cannot_pass_the_box_cap_and_each_message_is_served_once(run):
    async def body(s):
        opened = await asyncio.gather(
            *[s.create_channel(f"{i:016x}", A, 0, 10**12, 3) for i in range(8)], return_exceptions=True
        )
        assert sum(r is None for r in opened) == 3
        assert all(r is None or r.code == "too_many_channels" for r in opened)
        ch = next(f"{i:016x}" for i, r in enumerate(opened) if r is None)
        puts = await asyncio.gather(
            *[s.put_provisioning(ch, "new", b"%d" % i, 1, 8) for i in range(12)], return_exceptions=True
        )
        assert sum(isinstance(r, int) for r in puts) == 8
        taken = await asyncio.gather(*[s.take_provisioning(ch, "new", 1) for _ in range(12)])
        served = [t for t in taken if t is not None]
        assert len(served) == len(set(served)) == 8

    run(body)


def test_close_channel_and_the_channel_sweep(run):
    async def body(s):
        await s.create_channel("0" * 16, A, 0, 1_000, 5)
        await s.create_channel("1" * 16, A, 0, 5_000, 5)
        await s.create_channel("2" * 16, A, 0, 5_000, 5)
        await s.put_provisioning("0" * 16, "new", b"old", 10, 8)
        await s.put_provisioning("1" * 16, "new", b"young", 10, 8)
        with pytest.raises(ChannelNotFound):
            await s.close_channel("2" * 16, B, 10)  # not B's
        await s.close_channel("2" * 16, A, 10)
        with pytest.raises(ChannelNotFound):
            await s.take_provisioning("2" * 16, "new", 10)
        with pytest.raises(ChannelNotFound):
            await s.close_channel("2" * 16, A, 10)  # already gone
        assert await s.delete_expired_channels(2_000, 10) == 1
        with pytest.raises(ChannelNotFound):
            await s.take_provisioning("0" * 16, "new", 0)  # gone even for an earlier clock
        assert await s.take_provisioning("1" * 16, "new", 2_000) == b"young"
        await s.create_channel("3" * 16, A, 0, 3_000, 5)
        await s.create_channel("4" * 16, A, 0, 3_000, 5)
        assert await sweep_channels(s, 6_000, batch=1) == 3
        # an expired channel is deleted on close all the same, and reported as not found
        await s.create_channel("5" * 16, A, 0, 7_000, 5)
        with pytest.raises(ChannelNotFound):
            await s.close_channel("5" * 16, A, 8_000)
        await s.create_channel("5" * 16, A, 8_000, 9_000, 5)  # the id is free again

    run(body)


# --- attachment blobs ---


def test_blob_metadata(run):
    from .test_blob_storage import blob_storage_scenario

    run(blob_storage_scenario)


def test_blob_parts_of_a_missing_or_expired_blob(run):
    async def body(s):
        with pytest.raises(BlobNotFound):
            await s.add_blob_part("1" * 32, A, 0, 0)
        with pytest.raises(BlobNotFound):
            await s.complete_blob("1" * 32, A, b"d" * 32, 0)
        assert await s.delete_blob("1" * 32, A) is False
        await s.create_blob("1" * 32, A, 10, 4, now_ms=100, live_after_ms=0, quota=100)
        with pytest.raises(BlobNotFound):
            await s.complete_blob("1" * 32, A, b"d" * 32, 100)  # created at 100: expired for 100
        with pytest.raises(BlobQuotaExceeded) as exc:
            await s.create_blob("2" * 32, A, 91, 4, now_ms=200, live_after_ms=0, quota=100)
        assert exc.value.used == 10
        assert await s.delete_blob("1" * 32, A) is True
        assert await s.delete_blobs([]) == 0

    run(body)


# --- backups ---


def test_backups_replace_and_restore_by_access_hash(run):
    async def body(s):
        h1, h2 = b"1" * 32, b"2" * 32
        assert await s.get_backup(A) is None and await s.backup_by_access(h1) is None
        assert await s.put_backup(A, h1, "b1" * 16, 10, 1_000) is None
        info = await s.get_backup(A)
        assert (info.account_id, info.blob_id, info.size, info.created_at, info.updated_at) == (
            A,
            "b1" * 16,
            10,
            1_000,
            1_000,
        )
        assert await s.backup_by_access(h1) == info
        with pytest.raises(StorageConflict) as exc:
            await s.put_backup(B, h1, "b9" * 16, 10, 1_500)
        assert exc.value.code == "backup_access_taken"
        assert await s.get_backup(B) is None
        # a new upload replaces the row (and its hash): the old blob id comes back to delete
        assert await s.put_backup(A, h2, "b2" * 16, 20, 2_000) == "b1" * 16
        info = await s.get_backup(A)
        assert (info.blob_id, info.size, info.created_at, info.updated_at) == ("b2" * 16, 20, 1_000, 2_000)
        assert await s.backup_by_access(h1) is None and await s.backup_by_access(h2) == info
        assert await s.put_backup(B, h1, "b3" * 16, 5, 2_500) is None  # h1 is free again
        assert await s.delete_backup(A) == "b2" * 16
        assert await s.delete_backup(A) is None
        assert await s.get_backup(A) is None

    run(body)


# --- profiles and sealed-sender access ---


def test_profiles_never_go_back_a_revision(run):
    async def body(s):
        k1, k2 = b"k" * 32, b"K" * 32
        assert await s.get_profile(A) is None
        assert await s.put_profile(A, k1, 5, b"five", 1) is True
        assert await s.put_profile(A, k1, 4, b"four", 2) is False
        assert await s.get_profile(A) == (k1, b"five")
        assert await s.put_profile(A, k2, 5, b"five again", 3) is True  # the same revision replaces
        assert await s.put_profile(A, k2, 6, b"six", 4) is True
        assert await s.get_profile(A) == (k2, b"six")
        assert await s.get_profile(B) is None

    run(body)


def test_sealed_access_keeps_the_verifier_unless_given_a_new_one(run):
    async def body(s):
        assert await s.get_sealed_access(A) == (None, False)
        await s.set_sealed_access(A, b"v" * 32, False)
        assert await s.get_sealed_access(A) == (b"v" * 32, False)
        await s.set_sealed_access(A, None, True)
        assert await s.get_sealed_access(A) == (b"v" * 32, True)
        await s.set_sealed_access(A, b"w" * 32, False)
        assert await s.get_sealed_access(A) == (b"w" * 32, False)
        await s.set_sealed_access(B, None, True)
        assert await s.get_sealed_access(B) == (None, True)

    run(body)


# --- reachable handles and discovery ---


def test_put_handle_claims_replaces_and_caps(run):
    async def body(s):
        t1, t2, t3 = b"\x00\x01" + b"1" * 30, b"\x00\x02" + b"2" * 30, b"\xff\xff" + b"3" * 30
        row = await s.put_handle(_handle(A, t1), 2)
        assert await s.get_handle(A, t1) == row
        assert await s.get_handle(B, t1) is None
        with pytest.raises(StorageConflict) as exc:
            await s.put_handle(_handle(B, t1), 2)  # unverified claim of a handle A holds
        assert exc.value.code == "handle_taken"
        pending = _handle(B, t1, state="pending", record=b"", code_hash=b"c" * 32, code_expires_at=9_000)
        await s.put_handle(pending, 2)  # a pending claim waits for its code
        assert await s.get_handle(B, t1) == pending
        await s.put_handle(_handle(A, t2), 2)
        with pytest.raises(StorageConflict) as exc:
            await s.put_handle(_handle(A, t3), 2)
        assert exc.value.code == "too_many_handles"
        replaced = _handle(A, t2, label=b"new label", receiving=False)
        await s.put_handle(replaced, 2)  # replacing a held row is not one more
        assert await s.get_handle(A, t2) == replaced
        assert [r.tag for r in await s.account_handles(A)] == sorted([t1, t2])

    run(body)


def test_codes_verification_and_transfer(run):
    async def body(s):
        tag = b"\x12\x34" + b"t" * 30
        await s.put_handle(_handle(A, tag, state="verified", record=b"rec-a"), 10)
        pending = _handle(B, tag, state="pending", record=b"", code_hash=b"c" * 32, code_expires_at=9_000)
        await s.put_handle(pending, 10)
        assert await s.wrong_code(B, tag, 3) == 2
        assert await s.wrong_code(B, tag, 3) == 1
        assert (await s.get_handle(B, tag)).code_tries == 2
        assert await s.wrong_code(B, tag, 3) == 0
        void = await s.get_handle(B, tag)
        assert void.code_hash is None and void.code_expires_at == 0  # voided at the last try
        await s.put_handle(pending, 10)  # a new code
        await s.verify_handle(B, tag, b"rec-b")
        row = await s.get_handle(B, tag)
        assert (row.state, row.record, row.code_hash, row.code_tries) == ("verified", b"rec-b", None, 0)
        assert await s.get_handle(A, tag) is None  # whoever proves the handle now holds it
        assert await s.discovery_bucket(0, 0xFFFF) == [(tag, b"rec-b")]

    run(body)


def test_update_remove_and_discovery_buckets(run):
    async def body(s):
        low, mid, high = b"\x00\x05" + b"a" * 30, b"\x80\x00" + b"b" * 30, b"\xff\xf0" + b"c" * 30
        for account_id, tag in ((A, low), (B, mid), (C, high)):
            await s.put_handle(_handle(account_id, tag, record=b"rec-" + tag[:2]), 10)
        await s.put_handle(_handle(A, b"\x80\x01" + b"p" * 30, state="pending", code_hash=b"c" * 32), 10)
        assert await s.discoverable_count() == 3
        assert await s.discovery_bucket(0x0000, 0x7FFF) == [(low, b"rec-" + low[:2])]
        assert [t for t, _ in await s.discovery_bucket(0x8000, 0xFFFF)] == [mid, high]  # pending is not served
        row = await s.update_handle(B, mid, False, None)
        assert row.receiving is False and row.label == b"label"
        assert await s.discoverable_count() == 2
        assert await s.discovery_bucket(0x8000, 0x8000) == []
        row = await s.update_handle(B, mid, None, b"relabelled")
        assert row.receiving is False and row.label == b"relabelled"
        assert await s.update_handle(A, mid, True, None) is None  # not A's
        assert await s.remove_handle(A, mid) is False
        assert await s.remove_handle(C, high) is True
        assert await s.remove_handle(C, high) is False
        assert await s.discoverable_count() == 1

    run(body)


# --- the privacy report's queries ---


def test_report_rows_run_every_section_with_bytes_as_bytes(run):
    async def body(s):
        await _account(s, A, devices=(1, 2))
        await s.store_envelopes(A, "1" * 32, {1: b"x", 2: b"yy"}, None, 5)
        rows = {section.name: await s.report_rows(section.query, (A,)) for section in SECTIONS}
        assert rows["account"] == [(A, KEY, len(b"list-2"), 100)]
        assert isinstance(rows["account"][0][1], bytes)
        assert [r[0] for r in rows["devices"]] == [1, 2]
        assert [(r[0], r[1], int(r[2])) for r in rows["mailboxes"]] == [(1, 1, 1), (2, 1, 2)]
        assert rows["blobs"] == [] and rows["backups"] == []
        assert await s.report_rows(SECTIONS[0].query, (B,)) == []

    run(body)


# --- lifecycle ---


def test_what_was_acknowledged_survives_a_reopen(run):
    async def body(s):
        await _account(s, A)
        await s.store_envelopes(A, "1" * 32, {1: b"kept"}, None, 1)

    async def again(s):
        assert await s.authenticate(_token(A, 1)) == DeviceRef(A, 1)
        return [m.body for m in (await s.fetch(DeviceRef(A, 1), 10, 0, 1 << 20))[0]]

    run(body)
    assert run(again) == [b"kept"]

    async def closed(s):
        return s

    s = run(closed)
    with pytest.raises(Exception) as exc:  # a closed storage refuses, it does not hang
        asyncio.run(s.get_account(A))
    assert type(exc.value).__name__ == "StorageUnavailable"
