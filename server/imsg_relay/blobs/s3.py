"""Blobs in an S3-compatible object store (AWS S3, MinIO, Ceph RGW, ...), through boto3.

For relays with several workers: every worker reads and writes the same bucket, so a part
uploaded through one is downloadable through another. URL: `s3://BUCKET[/PREFIX]?endpoint=
URL&region=REGION`; credentials come the way boto3 finds them (AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY, a profile, an instance role), never from the URL.

S3 objects cannot be written at an offset, so a blob is a manifest object and segments:
- `PREFIX/BLOB_ID` (empty) carries the blob's size in its metadata (`create`);
- `PREFIX/BLOB_ID.seg/OFFSET` (16 hex digits) holds what one writer wrote from OFFSET.
A writer spools what it receives to a temporary file (in memory up to BLOB_READ_CHUNK,
then on disk, never the whole part in memory) and uploads it as one segment on `sync`,
so a part is in the store whole or not at all; re-sending a part replaces its segment.
Reads list the segments once and stream byte ranges of the ones a request spans.

Every boto3 call is blocking and runs in a thread, off the event loop. Unlike files, a
blob deleted while a download streams stops that download (the reader raises BlobMissing).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from imsg_relay.blobs.base import BlobMissing
from imsg_relay.settings import BLOB_READ_CHUNK, SettingsError

_ID = re.compile(r"[0-9a-f]{32}")
_SEGMENT = re.compile(r"\.seg/([0-9a-f]{16})$")
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str
    endpoint: str | None
    region: str | None

    @classmethod
    def parse(cls, url: str) -> S3Location:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise SettingsError("an S3 blob store URL is s3://BUCKET[/PREFIX]?endpoint=URL&region=REGION")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"endpoint", "region"}
        if unknown:
            raise SettingsError(f"unknown S3 blob store option(s): {', '.join(sorted(unknown))}")
        prefix = parts.path.strip("/")
        return cls(parts.netloc, f"{prefix}/" if prefix else "", query.get("endpoint"), query.get("region"))


class S3BlobStore:
    def __init__(self, location: S3Location, client: Any | None = None) -> None:
        self.location = location
        self.bucket = location.bucket
        self.client = client or boto3.client(
            "s3",
            endpoint_url=location.endpoint,
            region_name=location.region or "us-east-1",
            # path-style addressing works with every S3-compatible server, not only AWS
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
            ),
        )

    @classmethod
    def from_url(cls, url: str) -> S3BlobStore:
        return cls(S3Location.parse(url))

    def key(self, blob_id: str) -> str:
        # Ids come from the relay (validated at the route too); never a key of the caller's.
        if not _ID.fullmatch(blob_id):
            raise ValueError("blob id is not 32 lowercase hex characters")
        return f"{self.location.prefix}{blob_id}"

    def segment_key(self, blob_id: str, offset: int) -> str:
        return f"{self.key(blob_id)}.seg/{offset:016x}"

    async def ping(self) -> None:
        """Raises unless the bucket is reachable (readiness)."""
        await asyncio.to_thread(self.client.head_bucket, Bucket=self.bucket)

    async def create(self, blob_id: str, size: int) -> None:
        await asyncio.to_thread(
            self.client.put_object, Bucket=self.bucket, Key=self.key(blob_id), Body=b"", Metadata={"size": str(size)}
        )

    async def size(self, blob_id: str) -> int | None:
        try:
            head = await asyncio.to_thread(self.client.head_object, Bucket=self.bucket, Key=self.key(blob_id))
        except ClientError as exc:
            if _missing(exc):
                return None
            raise
        return int(head["Metadata"].get("size", "0"))

    async def open_write(self, blob_id: str, offset: int) -> _Writer:
        if await self.size(blob_id) is None:
            raise BlobMissing(blob_id)
        return _Writer(self, blob_id, offset)

    async def open_read(self, blob_id: str) -> _Reader:
        size = await self.size(blob_id)
        if size is None:
            raise BlobMissing(blob_id)
        segments = await asyncio.to_thread(self._segments, blob_id)
        return _Reader(self, size, segments)

    def _segments(self, blob_id: str) -> list[tuple[int, int, str]]:
        """(offset, length, key) of every segment, by offset."""
        found = []
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{self.key(blob_id)}.seg/"
        )
        for page in pages:
            for obj in page.get("Contents", ()):
                m = _SEGMENT.search(obj["Key"])
                if m:
                    found.append((int(m.group(1), 16), int(obj["Size"]), obj["Key"]))
        return sorted(found)

    async def sha256(self, blob_id: str) -> bytes:
        reader = await self.open_read(blob_id)
        h = hashlib.sha256()
        async for chunk in reader.chunks(0, reader.size, BLOB_READ_CHUNK):
            h.update(chunk)
        return h.digest()

    async def delete(self, blob_id: str) -> None:
        def delete_all() -> None:
            keys = [k for _, _, k in self._segments(blob_id)] + [self.key(blob_id)]
            for i in range(0, len(keys), 1000):  # DeleteObjects takes 1000 keys a call
                self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True}
                )

        await asyncio.to_thread(delete_all)


class _Writer:
    def __init__(self, store: S3BlobStore, blob_id: str, offset: int) -> None:
        self.store = store
        self.blob_id = blob_id
        self.offset = offset
        self.spool: Any = tempfile.SpooledTemporaryFile(max_size=BLOB_READ_CHUNK)
        self.length = 0

    async def write(self, data: bytes) -> None:
        if self.length + len(data) > BLOB_READ_CHUNK or self.spool._rolled:
            await asyncio.to_thread(self.spool.write, data)  # past the memory part: disk
        else:
            self.spool.write(data)
        self.length += len(data)

    async def sync(self) -> None:
        """Uploads the segment; once this returns, the store has it (S3 writes are durable
        when acknowledged)."""
        if await self.store.size(self.blob_id) is None:
            raise BlobMissing(self.blob_id)  # deleted meanwhile: never bring it back
        self.spool.seek(0)
        await asyncio.to_thread(
            self.store.client.upload_fileobj,
            self.spool,
            self.store.bucket,
            self.store.segment_key(self.blob_id, self.offset),
        )

    async def close(self) -> None:
        self.spool.close()


class _Reader:
    def __init__(self, store: S3BlobStore, size: int, segments: list[tuple[int, int, str]]) -> None:
        self.store = store
        self.size = size
        self.segments = segments

    async def chunks(self, start: int, end: int, chunk_size: int) -> AsyncIterator[bytes]:
        pos = start
        for seg_offset, seg_length, key in self.segments:
            seg_end = seg_offset + seg_length
            if seg_end <= pos or seg_offset >= end:
                continue
            if seg_offset > pos:
                raise BlobMissing("blob has a gap")  # a part never uploaded: stop, never invent bytes
            last = min(end, seg_end)
            try:
                got = await asyncio.to_thread(
                    self.store.client.get_object,
                    Bucket=self.store.bucket,
                    Key=key,
                    Range=f"bytes={pos - seg_offset}-{last - seg_offset - 1}",
                )
            except ClientError as exc:
                if _missing(exc):
                    raise BlobMissing("blob deleted") from None
                raise
            body = got["Body"]
            try:
                while pos < last:
                    data = await asyncio.to_thread(body.read, min(chunk_size, last - pos))
                    if not data:
                        raise BlobMissing("blob segment ended early")
                    pos += len(data)
                    yield data
            finally:
                body.close()
        if pos < end:
            raise BlobMissing("blob ended early")

    async def close(self) -> None:
        pass


def _missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code", "")) in _NOT_FOUND
