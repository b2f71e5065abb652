"""Attachment transfers: encrypt while uploading in resumable parts, download and check
before decrypting, and write files under safe names.

Upload: the attachment key, blob id and source file are recorded before the first byte
leaves, so running the same command again (same file, same size and mtime) resumes: the
relay lists the parts it holds, and only the missing ones are sent. Finished parts are
re-encrypted locally (deterministic: same key, same segment nonces) only to carry the
SHA-256 of the whole ciphertext forward, which the recipient checks.

Download: the ciphertext goes to a 0600 temporary file beside the destination; its length
and SHA-256 must equal what the sender put in the end-to-end message before a single byte
is decrypted (the relay may swap or truncate blobs: SECURITY-TESTS 2). Nothing is ever
decoded or parsed: the file is written as it is, under a sanitised name (SECURITY-TESTS 3).
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from imsg import errors
from imsg.client.results import Draft
from imsg.crypto import stream
from imsg.crypto.errors import AuthenticationError
from imsg.crypto.kdf import constant_time_equal
from imsg.protocol.content import MAX_NAME_LEN, AttachmentPointer
from imsg.protocol.stores import Store, StoredAttachment, Upload
from imsg.relay_client import AnonymousRelay, RelayClient

if TYPE_CHECKING:
    from hashlib import _Hash

    from imsg.client.context import Context

Progress = Callable[[int], None]
# What a caller of the client passes: (file name, bytes done, bytes in all).
FileProgress = Callable[[str, int, int], None]
_CHUNK_SEGMENTS = 16  # ~1 MiB of ciphertext per chunk: memory stays flat whatever the size


def safe_filename(name: str) -> str:
    """A file name that cannot leave its directory or fool a terminal: no path parts, no
    control or format characters (NUL, newlines, RTL overrides), no leading dot, at most
    255 bytes of UTF-8."""
    base = name.replace("\\", "/").split("/")[-1]
    cleaned = "".join(c for c in base if unicodedata.category(c)[0] != "C")
    cleaned = cleaned.strip().lstrip(".").strip()
    if not cleaned:
        cleaned = "attachment"
    encoded = cleaned.encode("utf-8")
    if len(encoded) > 255:
        stem, dot, ext = cleaned.rpartition(".")
        ext = ext if dot and len(ext.encode()) <= 16 else ""
        limit = 255 - (len(ext.encode()) + 1 if ext else 0)
        stem = (stem if ext else cleaned).encode("utf-8")[:limit].decode("utf-8", "ignore")
        cleaned = f"{stem}.{ext}" if ext else stem
    return cleaned


def free_path(directory: Path, name: str) -> Path:
    """`directory/name`, or `name (2)`, `name (3)`... — never overwrite an existing file."""
    candidate = directory / name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    n = 2
    while candidate.exists():
        candidate = directory / (f"{stem} ({n}).{ext}" if ext else f"{stem} ({n})")
        n += 1
    return candidate


def describe(path: Path) -> tuple[str, str]:
    """(name, content type) for a file about to be sent: the type is a guess from the name
    and only informs the recipient; nobody decodes anything by it."""
    name = path.name[:MAX_NAME_LEN]
    return name, (mimetypes.guess_type(name)[0] or "application/octet-stream")[:127]


def upload(
    relay: RelayClient, store: Store, path: Path, *, key: bytes, now_ms: int, progress: Progress | None = None
) -> Upload:
    """Upload `path` encrypted, resuming an earlier interrupted upload of the same file."""
    path = path.resolve()
    try:
        st = path.stat()
    except OSError as exc:
        raise errors.UsageError(f"cannot read {path}: {exc.strerror}") from None
    if not path.is_file():
        raise errors.UsageError(f"not a file: {path}")
    record = store.find_upload(str(path), st.st_size, st.st_mtime_ns)
    received: set[int] = set()
    if record is not None and record.complete and record.expires_at > now_ms:
        if progress:
            progress(st.st_size)
        return record  # already uploaded (a draft, or a send that failed after the upload)
    if record is not None and record.expires_at > now_ms:
        try:
            status = relay.blob_status(record.blob_id)
            received = {int(i) for i in status.get("received", [])}
        except errors.RelayRefusedError as exc:
            if exc.status != 404:
                raise
            record = None  # the relay no longer has it: start over
    else:
        record = None
    if record is None:
        size = stream.ciphertext_length(st.st_size)
        created = relay.create_blob(size)
        name, ctype = describe(path)
        record = Upload(
            str(created["blob_id"]),
            str(path),
            st.st_size,
            st.st_mtime_ns,
            key,
            size,
            int(created["part_size"]),
            name,
            ctype,
            now_ms,
            int(created.get("expires_at", 0)),
        )
        with store.transaction():
            store.save_upload(record)  # before any byte leaves: a rerun can resume
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        parts = _parts(
            stream.iter_encrypt(record.key, src, chunk_segments=_CHUNK_SEGMENTS), record.size, record.part_size
        )
        for index, (length, chunks) in enumerate(parts):
            if index in received:
                for chunk in chunks:  # already at the relay: only carry the digest forward
                    digest.update(chunk)
            else:
                relay.put_part(record.blob_id, index, _hashed(chunks, digest), length)
            if progress:  # in plaintext bytes, which is what a person thinks of
                progress(length * st.st_size // record.size)
    answer = relay.complete_blob(record.blob_id)
    ours = digest.digest()
    theirs = answer.get("sha256")
    if isinstance(theirs, str) and theirs != ours.hex():
        raise errors.SecurityError("the relay stored different bytes than were uploaded")
    record = replace(record, digest=ours, complete=True)
    with store.transaction():
        store.save_upload(record)
    return record


def pointer(record: Upload) -> AttachmentPointer:
    return AttachmentPointer(record.blob_id, record.key, record.digest, record.size, record.name, record.content_type)


def stored_attachments(message_id: str, pointers: Iterable[AttachmentPointer]) -> list[StoredAttachment]:
    """The attachment rows of a message (sent or received), in the order the content lists them."""
    return [
        StoredAttachment(message_id, i, p.blob_id, p.key, p.digest, p.size, p.name, p.content_type)
        for i, p in enumerate(pointers)
    ]


def _hashed(chunks: Iterator[bytes], digest: _Hash) -> Iterator[bytes]:
    for chunk in chunks:
        digest.update(chunk)
        yield chunk


def _parts(ciphertext: Iterator[bytes], total: int, part_size: int) -> Iterator[tuple[int, Iterator[bytes]]]:
    """Cut a ciphertext stream into relay parts of `part_size` bytes (the last: the rest),
    each part a lazy iterator of chunks, so no part is ever held in memory whole."""
    carry = memoryview(b"")
    source = iter(ciphertext)
    offset = 0
    while offset < total:
        length = min(part_size, total - offset)

        def part(length: int = length) -> Iterator[bytes]:
            nonlocal carry
            left = length
            while left:
                if not carry:
                    try:
                        carry = memoryview(next(source))
                    except StopIteration:
                        raise errors.LocalStateError("the file shrank while it was being sent") from None
                take = carry[:left]
                carry = carry[len(take) :]
                left -= len(take)
                yield bytes(take)

        chunks = part()
        yield length, chunks
        for _ in chunks:  # a caller that skipped the part still advances the stream
            pass
        offset += length


def download(
    relay: AnonymousRelay, attachment: StoredAttachment, out_dir: Path, *, progress: Progress | None = None
) -> Path:
    """Fetch, check (length and SHA-256, before decrypting), decrypt, and write the file
    0600 under its sanitised name in `out_dir`. An interrupted download resumes from its
    temporary file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    temp = out_dir / f".imsg-{attachment.blob_id}.part"
    digest = hashlib.sha256()
    have = 0
    if temp.exists():
        with open(temp, "rb") as fh:  # resume: hash what is already here
            while block := fh.read(1 << 20):
                digest.update(block)
                have += len(block)
        if have > attachment.size:
            temp.unlink()
            digest, have = hashlib.sha256(), 0
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        with os.fdopen(fd, "ab") as out:
            if have < attachment.size:
                for chunk in relay.download_blob(attachment.blob_id, start=have):
                    have += len(chunk)
                    if have > attachment.size:
                        break  # longer than the sender said: stop reading, fail below
                    out.write(chunk)
                    digest.update(chunk)
                    if progress:
                        progress(len(chunk))
            out.flush()
            os.fsync(out.fileno())
    except errors.RelayRefusedError:
        temp.unlink(missing_ok=True)  # refused (e.g. purged): nothing to resume, leave nothing
        raise
    if have != attachment.size or not constant_time_equal(digest.digest(), attachment.digest):
        temp.unlink(missing_ok=True)
        raise errors.SecurityError(
            f"attachment {attachment.name!r} failed its integrity check: the relay served "
            "different or truncated data (nothing was decrypted)"
        )
    target = free_path(out_dir, safe_filename(attachment.name))
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as dst, open(temp, "rb") as src:
            stream.decrypt_file(attachment.key, src, dst)
    except AuthenticationError:
        target.unlink(missing_ok=True)
        temp.unlink(missing_ok=True)  # it would fail the same way again
        raise errors.SecurityError(f"attachment {attachment.name!r} failed to decrypt: tampered") from None
    temp.unlink(missing_ok=True)
    return target


class Attachments:
    """Attachments of one client: drafts (uploaded before the message is written), the
    uploads of a send, and saving what a message carried."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.store = ctx.store

    def upload(self, path: Path, progress: FileProgress | None) -> Upload:
        total = path.stat().st_size if path.exists() else 0
        report = (lambda n: progress(path.name, n, total)) if progress else None
        return upload(
            self.ctx.relay(), self.store, path, key=self.ctx.rng(32), now_ms=self.ctx.now_ms(), progress=report
        )

    def pointers(
        self, drafts: Iterable[str], paths: Iterable[str | os.PathLike[str]], progress: FileProgress | None
    ) -> list[AttachmentPointer]:
        """What a message carries: the drafts named, then each file, encrypted while it
        streams to the relay."""
        out = [self.draft_pointer(d) for d in drafts]
        for path in paths:
            out.append(pointer(self.upload(Path(path), progress)))
        return out

    def attach(self, path: str | os.PathLike[str], *, progress: FileProgress | None = None) -> Draft:
        """Upload a file now (encrypted) and keep it as a draft to send later, as iMessage
        does while you type. The relay purges drafts never sent after 30 days."""
        self.ctx.account()
        record = self.upload(Path(path), progress)
        return Draft(record.blob_id, record.name, record.plain_size, record.content_type, record.expires_at)

    def drafts(self) -> list[Draft]:
        return [
            Draft(u.blob_id, u.name, u.plain_size, u.content_type, u.expires_at)
            for u in self.store.uploads()
            if u.complete and u.expires_at > self.ctx.now_ms()
        ]

    def draft_pointer(self, draft_id: str) -> AttachmentPointer:
        record = self.store.get_upload(draft_id)
        if record is None or not record.complete:
            raise errors.LocalStateError(f"no draft attachment {draft_id}", hint="see imsg attach FILE")
        if record.expires_at <= self.ctx.now_ms():
            raise errors.LocalStateError(f"draft {draft_id} expired at the relay", hint="attach the file again")
        return pointer(record)

    def save(
        self, message_id: str, out_dir: str | os.PathLike[str], *, progress: FileProgress | None = None
    ) -> list[Path]:
        """Download, check (length and digest from the encrypted message, before
        decrypting), decrypt and write each attachment of a message, 0600, under its
        sanitised name in `out_dir`. Returns the paths written."""
        self.ctx.account()
        rows = self.store.attachments(message_id)
        if not rows:
            if not self.store.has_message(message_id):
                raise errors.LocalStateError(f"no message {message_id}")
            return []
        out = Path(out_dir).expanduser()
        paths = []
        for a in rows:
            if a.saved_path and Path(a.saved_path).exists():
                paths.append(Path(a.saved_path))
                continue
            report = _per_file(progress, a.name, a.size) if progress else None
            try:
                # Without a credential, on a connection of its own: the download does not
                # join this device to the uploader (issue 12, row 6).
                path = download(self.ctx.anonymous(), a, out, progress=report)
            except errors.RelayRefusedError as exc:
                if exc.status == 404:
                    raise errors.RelayRefusedError(
                        f"attachment {a.name!r} is no longer on the relay (kept 30 days from upload)",
                        status=404,
                        relay_code="not_found",
                    ) from None
                raise
            with self.store.transaction():
                self.store.set_saved_path(message_id, a.index, str(path))
            paths.append(path)
        return paths


def _per_file(progress: FileProgress, name: str, total: int) -> Progress:
    return lambda n: progress(name, n, total)
