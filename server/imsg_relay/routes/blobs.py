"""Attachment blobs: opaque ciphertext, uploaded in parts (resumable), downloaded with
ranges by anyone holding the id, deleted 30 days after creation. The bytes live in the
blob store (imsg_relay/blobs/), the metadata in storage. Nothing here logs a blob id, a
size with an account, or any byte.
"""

from __future__ import annotations

import asyncio
import secrets

from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from imsg_relay.blobs.base import BlobMissing, BlobReader
from imsg_relay.context import RelayContext
from imsg_relay.errors import RelayError, bad_request
from imsg_relay.operation import Call, json_response, media_type
from imsg_relay.schema import BlobRequest
from imsg_relay.settings import BLOB_READ_CHUNK
from imsg_relay.storage.base import BlobInfo, BlobNotFound, BlobQuotaExceeded, DeviceRef, StorageConflict


def _live_after(relay: RelayContext) -> int:
    return relay.now_ms() - relay.settings.blob_retention_ms


def _expires_at(relay: RelayContext, info: BlobInfo) -> int:
    return info.created_at + relay.settings.blob_retention_ms


async def _own_blob(relay: RelayContext, call: Call, device: DeviceRef) -> BlobInfo:
    blob_id = call.path("blob_id")
    info = await relay.storage.get_blob(blob_id, _live_after(relay))
    if info is None or info.account_id != device.account_id:
        raise _no_blob()
    return info


async def create_blob(relay: RelayContext, call: Call) -> Response:
    device = await relay.authenticate(call.request)
    data = await call.body(BlobRequest)
    size, cap, quota = data.size, relay.settings.max_blob, relay.settings.blob_quota
    if size > cap:
        raise RelayError("payload_too_large", f"a blob may be at most {cap} bytes", limit=cap)
    now = relay.now_ms()
    part_size = relay.settings.blob_part_size
    while True:  # 128 random bits: a collision is retried, never expected
        blob_id = secrets.token_hex(16)
        try:
            await relay.storage.create_blob(
                blob_id, device.account_id, size, part_size, now, now - relay.settings.blob_retention_ms, quota
            )
        except BlobQuotaExceeded as exc:
            raise RelayError(
                "quota_exceeded",
                f"this account's unexpired blobs would pass its {quota} byte "
                "quota; delete some or wait for them to expire",
                limit=quota,
                used=exc.used,
            ) from None
        except StorageConflict:  # blob_exists
            continue
        break
    # The row first, then the file: a crash in between leaves a row without a file,
    # which the sweeper deletes at expiry, never a file nothing points to.
    try:
        await relay.blobs.create(blob_id, size)
    except BaseException:
        await relay.storage.delete_blob(blob_id, device.account_id)
        raise
    return json_response(
        {
            "blob_id": blob_id,
            "size": size,
            "part_size": part_size,
            "parts": -(-size // part_size),
            "expires_at": now + relay.settings.blob_retention_ms,
        },
        201,
    )


async def put_blob_part(relay: RelayContext, call: Call) -> Response:
    device = await relay.authenticate(call.request)
    index = call.path("index")
    if media_type(call.request) != "application/octet-stream":
        raise RelayError("unsupported_media_type", "a blob part must be application/octet-stream")
    info = await _own_blob(relay, call, device)
    if info.complete:
        raise _blob_complete()
    if index >= info.parts:
        raise bad_request(f"index is past the last part ({info.parts - 1})")
    offset = index * info.part_size
    expected = min(info.part_size, info.size - offset)
    declared = call.request.headers.get("content-length")
    if declared is not None:  # a number: the body cap middleware checked it
        if int(declared) > expected:
            raise _part_too_long(index, expected)
        if int(declared) < expected:
            raise _part_too_short(index, expected)
    try:
        writer = await relay.blobs.open_write(info.blob_id, offset)
    except BlobMissing:
        raise _no_blob() from None
    got = 0
    try:
        async for chunk in call.request.stream():
            got += len(chunk)
            if got > expected:  # refused as it overflows, before the rest is read
                raise _part_too_long(index, expected)
            await writer.write(chunk)
        if got < expected:
            raise _part_too_short(index, expected)
        await writer.sync()  # durable before it is recorded as received
    except ClientDisconnect:
        raise _part_too_short(index, expected) from None
    finally:
        await writer.close()
    try:
        info = await relay.storage.add_blob_part(info.blob_id, device.account_id, index, _live_after(relay))
    except BlobNotFound:
        raise _no_blob() from None
    except StorageConflict:  # completed while this part streamed in
        raise _blob_complete() from None
    return json_response({"received": list(info.received), "complete": len(info.received) == info.parts})


async def blob_status(relay: RelayContext, call: Call) -> Response:
    device = await relay.authenticate(call.request)
    info = await _own_blob(relay, call, device)
    return json_response(
        {
            "blob_id": info.blob_id,
            "size": info.size,
            "part_size": info.part_size,
            "parts": info.parts,
            "received": list(info.received),
            "complete": info.complete,
            "expires_at": _expires_at(relay, info),
        }
    )


async def complete_blob(relay: RelayContext, call: Call) -> Response:
    device = await relay.authenticate(call.request)
    info = await _own_blob(relay, call, device)
    if not info.complete:  # completing again answers the same (idempotent)
        have = set(info.received)
        missing = [i for i in range(info.parts) if i not in have]
        if missing:
            raise RelayError("incomplete", f"{len(missing)} of {info.parts} parts are missing", missing=missing)
        try:
            digest = await relay.blobs.sha256(info.blob_id)
        except BlobMissing:
            raise _no_blob() from None
        try:
            info = await relay.storage.complete_blob(info.blob_id, device.account_id, digest, _live_after(relay))
        except BlobNotFound:
            raise _no_blob() from None
    assert info.sha256 is not None
    return json_response({"blob_id": info.blob_id, "size": info.size, "sha256": info.sha256.hex()})


async def get_blob(relay: RelayContext, call: Call) -> Response:
    """No credential: the 128-bit id travels only inside the end-to-end message and is the
    capability; a credential here would join the downloader to the uploader (issue 12,
    row 6). Nothing records who downloads; counted per blob and relay-wide, in memory."""
    blob_id = call.path("blob_id")
    relay.limits.blob_read_global.check("blob")
    relay.limits.blob_read.check(blob_id)
    info = await relay.storage.get_blob(blob_id, _live_after(relay))
    if info is None or not info.complete:
        raise _no_blob()
    span = byte_range(call.request.headers.get("range"), info.size)
    try:
        reader = await relay.blobs.open_read(blob_id)
    except BlobMissing:
        raise _no_blob() from None
    return BlobResponse(reader, info.size, span, head=call.request.method == "HEAD")


async def delete_blob(relay: RelayContext, call: Call) -> Response:
    device = await relay.authenticate(call.request)
    blob_id = call.path("blob_id")
    # Row first (nobody can read or write it after), then the bytes.
    if not await relay.storage.delete_blob(blob_id, device.account_id):
        raise _no_blob()
    await relay.blobs.delete(blob_id)
    return json_response({"blob_id": blob_id})


class BlobResponse(Response):
    """A blob's bytes (or one range of them), read and sent one chunk at a time; stops
    reading as soon as the client goes away. Always closes the reader."""

    def __init__(self, reader: BlobReader, size: int, span: tuple[int, int] | None, head: bool) -> None:
        self.reader = reader
        self.head = head
        self.start, self.end = span if span is not None else (0, size)
        self.status_code = 206 if span is not None else 200
        self.background = None
        headers = {
            "Content-Length": str(self.end - self.start),
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if span is not None:
            headers["Content-Range"] = f"bytes {self.start}-{self.end - 1}/{size}"
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.ensure_future(watch())
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            if not self.head:
                async for chunk in self.reader.chunks(self.start, self.end, BLOB_READ_CHUNK):
                    if gone.is_set():
                        return
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            await self.reader.close()


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end) of one `bytes=a-b`, `a-` or `-n` range, end exclusive; None to send the
    whole blob (no Range, another unit, several ranges or a malformed one: RFC 9110 lets a
    server ignore those). Unsatisfiable: 416 with `Content-Range: bytes */size`."""
    if header is None:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if (
        not dash
        or not all(p.isascii() and p.isdigit() for p in (first, last) if p)
        or not (first or last)
        or len(first) > 18
        or len(last) > 18
    ):
        return None
    if not first:  # the last n bytes
        n = int(last)
        if n == 0:
            raise _unsatisfiable(size)
        return max(0, size - n), size
    start = int(first)
    end = size if not last else int(last) + 1
    if last and end <= start:
        return None  # b < a: malformed, ignored
    if start >= size:
        raise _unsatisfiable(size)
    return start, min(end, size)


def _unsatisfiable(size: int) -> RelayError:
    return RelayError(
        "range_not_satisfiable",
        f"the range is outside the blob's {size} bytes",
        headers={"Content-Range": f"bytes */{size}"},
    )


def _no_blob() -> RelayError:
    return RelayError("not_found", "no such blob, or it has expired (or is not complete, or not this account's)")


def _blob_complete() -> RelayError:
    return RelayError("blob_complete", "this blob is complete and read-only")


def _part_too_long(index: int, expected: int) -> RelayError:
    return RelayError("payload_too_large", f"part {index} must be exactly {expected} bytes", limit=expected)


def _part_too_short(index: int, expected: int) -> RelayError:
    return bad_request(f"part {index} must be exactly {expected} bytes; it was shorter")
