"""Blobs as files: `<root>/<first 2 hex of the id>/<blob id>`, files 0600, directories 0700.

Writes go to the blob's file at an offset with `pwrite`, gathered into writes of up to
BLOB_READ_CHUNK bytes and each run in a thread, so a slow disk never stalls the event loop
and a part is never held whole in memory. `sync` is an fsync of the file (and, the first
time, of its directory, so the file itself survives a crash).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from pathlib import Path
from typing import AsyncIterator

from imsg_relay.blobs.base import BlobMissing
from imsg_relay.settings import BLOB_READ_CHUNK

_ID = re.compile(r"[0-9a-f]{32}")


class FilesystemBlobStore:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def path(self, blob_id: str) -> Path:
        # Ids come from the relay (validated at the route too); never a path of the caller's.
        if not _ID.fullmatch(blob_id):
            raise ValueError("blob id is not 32 lowercase hex characters")
        return self.root / blob_id[:2] / blob_id

    async def create(self, blob_id: str, size: int) -> None:
        await asyncio.to_thread(self._create, self.path(blob_id), size)

    def _create(self, path: Path, size: int) -> None:
        for d in (self.root, path.parent):
            if not d.is_dir():
                d.mkdir(mode=0o700, parents=True, exist_ok=True)
                _fsync_dir(d.parent)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(path.parent)

    async def open_write(self, blob_id: str, offset: int) -> "_Writer":
        path = self.path(blob_id)
        try:
            fd = await asyncio.to_thread(os.open, path, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BlobMissing(blob_id) from None
        return _Writer(fd, offset)

    async def open_read(self, blob_id: str) -> "_Reader":
        path = self.path(blob_id)
        try:
            fd = await asyncio.to_thread(os.open, path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BlobMissing(blob_id) from None
        return _Reader(fd, os.fstat(fd).st_size)

    async def sha256(self, blob_id: str) -> bytes:
        reader = await self.open_read(blob_id)
        try:
            return await asyncio.to_thread(reader.digest)
        finally:
            await reader.close()

    async def delete(self, blob_id: str) -> None:
        try:
            await asyncio.to_thread(os.unlink, self.path(blob_id))
        except FileNotFoundError:
            pass

    async def size(self, blob_id: str) -> int | None:
        try:
            return (await asyncio.to_thread(os.stat, self.path(blob_id))).st_size
        except FileNotFoundError:
            return None


class _Writer:
    def __init__(self, fd: int, offset: int) -> None:
        self.fd = fd
        self.offset = offset
        self.buffer = bytearray()

    async def write(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) >= BLOB_READ_CHUNK:
            await self._flush()

    async def _flush(self) -> None:
        if self.buffer:
            data, self.buffer = bytes(self.buffer), bytearray()
            await asyncio.to_thread(_pwrite_all, self.fd, data, self.offset)
            self.offset += len(data)

    async def sync(self) -> None:
        await self._flush()
        await asyncio.to_thread(os.fsync, self.fd)

    async def close(self) -> None:
        self.buffer = bytearray()
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


class _Reader:
    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size

    async def chunks(self, start: int, end: int, chunk_size: int) -> AsyncIterator[bytes]:
        pos = start
        while pos < end:
            data = await asyncio.to_thread(os.pread, self.fd, min(chunk_size, end - pos), pos)
            if not data:  # the file is shorter than it should be: stop, never spin
                raise BlobMissing("blob file ended early")
            pos += len(data)
            yield data

    def digest(self) -> bytes:
        h = hashlib.sha256()
        pos = 0
        while True:
            data = os.pread(self.fd, BLOB_READ_CHUNK, pos)
            if not data:
                return h.digest()
            h.update(data)
            pos += len(data)

    async def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
