"""The blob store interface: where attachment ciphertext lives (metadata is in `Storage`).

A store knows nothing of accounts, parts or expiry: it holds one byte string per blob id,
written at offsets, read in ranges, deleted. The filesystem store (`filesystem.py`) is the
default; an S3-compatible one can implement the same calls for the scale-out path.

Every call that touches the disk runs off the event loop (a thread), and nothing here ever
holds more than one chunk of a blob in memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol


class BlobMissing(Exception):
    """no file for this blob id (never created, or deleted)"""


class BlobWriter(Protocol):
    """Writes sequentially from the offset it was opened at."""

    async def write(self, data: bytes) -> None: ...

    async def sync(self) -> None:
        """Makes everything written durable (fsync) before it returns."""

    async def close(self) -> None: ...


class BlobReader(Protocol):
    size: int

    def chunks(self, start: int, end: int, chunk_size: int) -> AsyncIterator[bytes]:
        """Bytes start..end-1, at most `chunk_size` at a time."""

    async def close(self) -> None: ...


class BlobStore(Protocol):
    async def create(self, blob_id: str, size: int) -> None:
        """An empty (sparse) blob of `size` bytes, ready for writes at any offset."""

    async def open_write(self, blob_id: str, offset: int) -> BlobWriter:
        """Raises BlobMissing: a write never brings a deleted blob back."""

    async def open_read(self, blob_id: str) -> BlobReader:
        """Raises BlobMissing. An open reader keeps reading if the blob is deleted."""

    async def sha256(self, blob_id: str) -> bytes:
        """SHA-256 of the whole blob, read once in chunks. Raises BlobMissing."""

    async def delete(self, blob_id: str) -> None:
        """Deletes the blob; a missing one is not an error."""

    async def size(self, blob_id: str) -> int | None:
        """The blob's size in bytes, None when it does not exist."""
