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
from collections.abc import AsyncIterator
from pathlib import Path

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

    async def ping(self) -> None:
        """Raises unless the blob directory exists (or can be made) and is writable."""

        def check() -> None:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not os.access(self.root, os.W_OK | os.X_OK):
                raise PermissionError("blob directory is not writable")

        await asyncio.to_thread(check)

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

    async def open_write(self, blob_id: str, offset: int) -> _Writer:
        path = self.path(blob_id)
        try:
            fd = await asyncio.to_thread(os.open, path, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BlobMissing(blob_id) from None
        return _Writer(fd, offset)

    async def open_read(self, blob_id: str) -> _Reader:
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
    """Gathers received chunks into writes of about BLOB_READ_CHUNK bytes (`pwritev`, no
    copy) and keeps one write in flight in a thread while the next one fills, so receiving
    and writing overlap. At most two such buffers are held at once."""

    def __init__(self, fd: int, offset: int) -> None:
        self.fd = fd
        self.offset = offset
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.in_flight: asyncio.Future[None] | None = None

    async def write(self, data: bytes) -> None:
        self.pending.append(data)
        self.pending_bytes += len(data)
        if self.pending_bytes >= BLOB_READ_CHUNK:
            await self._flush()

    async def _flush(self) -> None:
        if self.in_flight is not None:
            in_flight, self.in_flight = self.in_flight, None
            await in_flight
        if self.pending:
            chunks, offset = self.pending, self.offset
            self.pending, self.offset = [], self.offset + self.pending_bytes
            self.pending_bytes = 0
            loop = asyncio.get_running_loop()
            self.in_flight = loop.run_in_executor(None, _pwritev_all, self.fd, chunks, offset)

    async def sync(self) -> None:
        await self._flush()
        await self._flush()  # waits for the last write
        await asyncio.to_thread(os.fsync, self.fd)

    async def close(self) -> None:
        self.pending = []
        if self.in_flight is not None:  # never close the fd under a running write
            in_flight, self.in_flight = self.in_flight, None
            try:
                await asyncio.shield(in_flight)
            except Exception:
                pass
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


def _pwritev_all(fd: int, chunks: list[bytes], offset: int) -> None:
    views = [memoryview(c) for c in chunks if c]
    while views:
        n = os.pwritev(fd, views[:_IOV_MAX], offset)
        offset += n
        while n:
            if n >= len(views[0]):
                n -= len(views.pop(0))
            else:
                views[0] = views[0][n:]
                n = 0


_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
