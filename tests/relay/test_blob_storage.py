"""Blob metadata in the storage layer and the filesystem blob store, on their own. The same
scenario runs on PostgreSQL in test_postgres.py."""

from __future__ import annotations

import asyncio
import os
import stat

import pytest

from imsg_relay.blobs.base import BlobMissing
from imsg_relay.blobs.filesystem import FilesystemBlobStore
from imsg_relay.storage.base import BlobNotFound, BlobQuotaExceeded, StorageConflict
from imsg_relay.storage.sqlite import SQLiteStorage

A, B = "a" * 32, "b" * 32


async def blob_storage_scenario(s) -> None:
    x, y, z = "1" * 32, "2" * 32, "3" * 32
    await s.create_blob(x, A, 100, 40, now_ms=1_000, live_after_ms=0, quota=250)
    await s.create_blob(y, A, 100, 40, now_ms=2_000, live_after_ms=0, quota=250)
    with pytest.raises(BlobQuotaExceeded) as exc:
        await s.create_blob(z, A, 51, 40, now_ms=2_000, live_after_ms=0, quota=250)
    assert exc.value.used == 200
    await s.create_blob(z, B, 51, 40, now_ms=2_000, live_after_ms=0, quota=250)  # B's own
    with pytest.raises(StorageConflict) as conflict:
        await s.create_blob(x, B, 1, 40, now_ms=2_000, live_after_ms=0, quota=250)
    assert conflict.value.code == "blob_exists"
    # x no longer counts once it has expired (live_after_ms past its creation)
    await s.create_blob("4" * 32, A, 51, 40, now_ms=3_000, live_after_ms=1_000, quota=250)

    info = await s.get_blob(x, 0)
    assert (
        info.account_id,
        info.size,
        info.part_size,
        info.parts,
        info.created_at,
        info.complete,
        info.sha256,
        info.received,
    ) == (A, 100, 40, 3, 1_000, False, None, ())
    assert await s.get_blob(x, 1_000) is None  # expired for reads
    assert (await s.add_blob_part(x, A, 2, 0)).received == (2,)
    assert (await s.add_blob_part(x, A, 0, 0)).received == (0, 2)
    assert (await s.add_blob_part(x, A, 2, 0)).received == (0, 2)  # idempotent
    with pytest.raises(BlobNotFound):
        await s.add_blob_part(x, B, 1, 0)
    with pytest.raises(BlobNotFound):
        await s.add_blob_part(x, A, 1, 1_000)
    await s.add_blob_part(x, A, 1, 0)
    with pytest.raises(BlobNotFound):
        await s.complete_blob(x, B, b"d" * 32, 0)
    done = await s.complete_blob(x, A, b"d" * 32, 0)
    assert done.complete and done.sha256 == b"d" * 32 and done.received == (0, 1, 2)
    assert (await s.complete_blob(x, A, b"e" * 32, 0)).sha256 == b"d" * 32  # keeps its digest
    with pytest.raises(StorageConflict) as conflict:
        await s.add_blob_part(x, A, 0, 0)
    assert conflict.value.code == "blob_complete"

    assert await s.delete_blob(y, B) is False
    assert await s.delete_blob(y, A) is True
    assert await s.get_blob(y, 0) is None
    # expiry: oldest first, at most `limit`, and each batch deleted with its parts
    assert await s.expired_blobs(2_000, 10) == [x, z]
    assert await s.expired_blobs(2_000, 1) == [x]
    assert await s.delete_blobs([x, x]) == 1
    assert await s.expired_blobs(2_000, 10) == [z]
    assert await s.delete_blobs([z, "9" * 32]) == 1
    assert await s.expired_blobs(10_000, 10) == ["4" * 32]


def test_blob_metadata_on_sqlite(tmp_path):
    async def main():
        s = SQLiteStorage(tmp_path)
        await s.open()
        try:
            await blob_storage_scenario(s)
        finally:
            await s.close()
        import sqlite3

        db = sqlite3.connect(tmp_path / "relay.db")
        assert db.execute("SELECT count(*) FROM blob_parts").fetchone()[0] == 0
        # the uploader is on the row (quota, writes); nothing records who downloads
        cols = [r[1] for r in db.execute("PRAGMA table_info(blobs)")]
        assert cols == ["blob_id", "account_id", "size", "part_size", "created_at", "complete", "sha256"]

    asyncio.run(main())


def test_filesystem_store(tmp_path):
    async def main():
        store = FilesystemBlobStore(tmp_path / "blobs")
        bid = "ab" + "0" * 30
        await store.create(bid, 10)
        path = tmp_path / "blobs" / "ab" / bid
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert await store.size(bid) == 10
        with pytest.raises(FileExistsError):
            await store.create(bid, 10)  # never truncates an existing blob
        w = await store.open_write(bid, 6)
        await w.write(b"ghij")
        await w.sync()
        await w.close()
        w = await store.open_write(bid, 0)
        await w.write(b"abc")
        await w.write(b"def")
        await w.sync()
        await w.close()
        r = await store.open_read(bid)
        assert r.size == 10
        assert [c async for c in r.chunks(2, 9, 3)] == [b"cde", b"fgh", b"i"]
        await store.delete(bid)
        # an open reader keeps its bytes; new opens see nothing
        assert b"".join([c async for c in r.chunks(0, 10, 4)]) == b"abcdefghij"
        await r.close()
        assert await store.size(bid) is None
        with pytest.raises(BlobMissing):
            await store.open_write(bid, 0)
        with pytest.raises(BlobMissing):
            await store.open_read(bid)
        with pytest.raises(BlobMissing):
            await store.sha256(bid)
        await store.delete(bid)  # missing: fine
        for bad in ("../" + "0" * 29, "AB" + "0" * 30, "0" * 31):
            with pytest.raises(ValueError):
                store.path(bad)

    asyncio.run(main())
    assert not os.listdir(tmp_path / "blobs" / "ab")


def test_sweep_of_1001_expired_blobs_runs_in_batches_of_1000(tmp_path):
    """SECURITY-TESTS R4 for blobs: rows and files gone, never more than 1000 per batch."""
    from imsg_relay.sweeper import SWEEP_BATCH, sweep_blobs

    async def main():
        s = SQLiteStorage(tmp_path)
        store = FilesystemBlobStore(tmp_path / "blobs")
        await s.open()
        try:
            ids = [os.urandom(16).hex() for _ in range(SWEEP_BATCH + 1)]
            for i, bid in enumerate(ids):
                await s.create_blob(bid, A, 1, 1024, now_ms=i, live_after_ms=0, quota=10**9)
                await store.create(bid, 1)
            await s.create_blob("f" * 32, A, 1, 1024, now_ms=5_000, live_after_ms=0, quota=10**9)
            batches = []
            real = s.expired_blobs

            async def recording(live_after_ms, limit):
                got = await real(live_after_ms, limit)
                batches.append(len(got))
                return got

            s.expired_blobs = recording
            assert await sweep_blobs(s, store, 4_999) == SWEEP_BATCH + 1
            assert batches == [SWEEP_BATCH, 1]
            assert await real(10**12, 10) == ["f" * 32]
        finally:
            await s.close()
        assert [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == []

    asyncio.run(main())
