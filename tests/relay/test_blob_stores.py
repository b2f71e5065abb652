"""One suite for every blob store behind imsg_relay/blobs/base.py: the filesystem store and
the S3-compatible store (against moto's S3 server on loopback). What only one of them does
(file modes, an open reader outliving a delete) is tested beside it: test_blob_storage.py."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from imsg_relay.blobs.base import BlobMissing
from imsg_relay.settings import BLOB_READ_CHUNK


@pytest.fixture(params=["filesystem", "s3"])
def store(request, tmp_path):
    if request.param == "filesystem":
        from imsg_relay.blobs.filesystem import FilesystemBlobStore

        return FilesystemBlobStore(tmp_path / "blobs")
    from imsg_relay.blobs.s3 import S3BlobStore

    return S3BlobStore.from_url(request.getfixturevalue("s3_url"))


async def _read(store, blob_id, start=0, end=None, chunk=3):
    reader = await store.open_read(blob_id)
    try:
        return [c async for c in reader.chunks(start, reader.size if end is None else end, chunk)]
    finally:
        await reader.close()


async def _write(store, blob_id, offset, *pieces):
    writer = await store.open_write(blob_id, offset)
    try:
        for piece in pieces:
            await writer.write(piece)
        await writer.sync()
    finally:
        await writer.close()


def test_parts_written_at_offsets_read_back_in_ranges(store):
    async def main():
        bid = "ab" + "0" * 30
        await store.create(bid, 10)
        assert await store.size(bid) == 10
        assert await store.size("cd" + "0" * 30) is None
        await _write(store, bid, 6, b"ghij")  # parts arrive in any order
        await _write(store, bid, 0, b"abc", b"def")
        reader = await store.open_read(bid)
        assert reader.size == 10
        await reader.close()
        ranged = await _read(store, bid, 2, 9)
        assert b"".join(ranged) == b"cdefghi" and all(len(c) <= 3 for c in ranged)
        assert b"".join(await _read(store, bid)) == b"abcdefghij"
        assert all(len(c) <= 3 for c in await _read(store, bid))
        assert await store.sha256(bid) == hashlib.sha256(b"abcdefghij").digest()
        await _write(store, bid, 0, b"ABCDEF")  # a part sent again replaces itself
        assert b"".join(await _read(store, bid, 0, 10, 4)) == b"ABCDEFghij"
        await store.delete(bid)
        assert await store.size(bid) is None
        for opening in (store.open_write(bid, 0), store.open_read(bid), store.sha256(bid)):
            with pytest.raises(BlobMissing):
                await opening
        await store.delete(bid)  # missing: fine

    asyncio.run(main())


def test_an_unsynced_write_leaves_nothing_and_a_deleted_blob_stays_gone(store):
    async def main():
        bid = "ef" + "1" * 30
        await store.create(bid, 8)
        await _write(store, bid, 0, b"1234")
        writer = await store.open_write(bid, 4)
        await writer.write(b"5678")
        await store.delete(bid)
        try:  # the S3 store refuses; a file store writes to the unlinked file
            await writer.sync()
        except BlobMissing:
            pass
        await writer.close()  # either way the write never brings a deleted blob back
        assert await store.size(bid) is None

    asyncio.run(main())


def test_a_large_part_streams_in_bounded_chunks(store):
    """More than one read chunk, written in pieces and read back in pieces (ranged, and
    from the middle as a resumed download does)."""
    data = os.urandom(3 * BLOB_READ_CHUNK + 12345)

    async def main():
        bid = "12" + "3" * 30
        await store.create(bid, len(data))
        half = len(data) // 2
        await _write(store, bid, 0, *(data[i : i + 65536] for i in range(0, half, 65536)))
        await _write(store, bid, half, data[half:])
        got = await _read(store, bid, chunk=BLOB_READ_CHUNK)
        assert b"".join(got) == data and max(map(len, got)) <= BLOB_READ_CHUNK
        resumed = await _read(store, bid, start=half - 7, chunk=BLOB_READ_CHUNK)
        assert b"".join(resumed) == data[half - 7 :]
        assert await store.sha256(bid) == hashlib.sha256(data).digest()
        await store.delete(bid)

    asyncio.run(main())


def test_ids_that_are_not_relay_ids_are_refused(store):
    async def main():
        for bad in ("../" + "0" * 29, "AB" + "0" * 30, "0" * 31):
            with pytest.raises(ValueError):
                await store.create(bad, 1)

    asyncio.run(main())
