"""The attachment stream: age's STREAM over AES-256-GCM with 64 KiB segments.

A file is encrypted under a fresh random 256-bit attachment key K, drawn by the caller::

    stream_key = HKDF-SHA256(ikm=K, salt=None, info=LABEL_ATTACHMENT, L=32)
    P          = P_0 || P_1 || ... || P_n      |P_i| = SEGMENT for i < n,  |P_n| <= SEGMENT
    nonce_i    = I2OSP(i, 11) || (0x01 if i = n else 0x00)
    C_i        = AES-256-GCM-Seal(stream_key, nonce_i, P_i, ad="")   |C_i| = |P_i| + 16
    blob       = C_0 || C_1 || ... || C_n

The last segment may be shorter than SEGMENT and is empty only when the whole file is
(an empty file is one empty last segment, 16 bytes); a file of exactly k * SEGMENT bytes
ends with a full last segment. The blob carries nothing else: the key, the ciphertext
digest and the lengths travel inside the end-to-end message.

Decryption fails with `AuthenticationError` when the end is reached without a final
segment, when a segment marked final is followed by more data, when a non-final segment is
short, and on any tag failure, so truncation, reordering, swapping segments between files
and appending are all detected ("decryption MUST signal an error if the end is reached
without a final chunk", age's STREAM paragraph).

`decrypt_file` writes each run of segments as soon as it is authenticated, so after an
error `dst` holds an authenticated but incomplete prefix: callers decrypt into a temporary
file and remove it on error.

Speed: one AESGCM object per stream, `encrypt_into`/`decrypt_into` from and to
preallocated buffers through memoryview slices, `readinto` a reused buffer. The only
per-segment allocations are the 12-byte nonce and the slice objects.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from imsg.crypto.errors import AuthenticationError, InvalidKeyError
from imsg.crypto.kdf import hkdf
from imsg.crypto.labels import LABEL_ATTACHMENT

KEY_LEN = 32
SEGMENT = 65536
TAG = 16
ENCRYPTED_SEGMENT = SEGMENT + TAG

# The counter takes 11 bytes of the 12-byte nonce.
MAX_SEGMENTS = 1 << 88

# Segments per read/write in encrypt_file/decrypt_file: 1 MiB runs keep both buffers small
# (about 2 MiB per stream). 4 to 128 segments measured the same within this machine's
# page-cache noise (scripts/bench_stream); 4 was slower.
FILE_CHUNK_SEGMENTS = 16

_LAST = b"\x01"
_NOT_LAST = b"\x00"


def ciphertext_length(plain_len: int) -> int:
    """Length of the blob for a file of `plain_len` bytes."""
    if plain_len < 0:
        raise ValueError("plaintext length must not be negative")
    segments = max(1, -(-plain_len // SEGMENT))
    return plain_len + TAG * segments


def plaintext_length(ct_len: int) -> int:
    """Inverse of `ciphertext_length`; ValueError for a length no file encrypts to."""
    full, rest = divmod(ct_len, ENCRYPTED_SEGMENT)
    if ct_len < TAG or (0 < rest < TAG) or (rest == TAG and full > 0):
        raise ValueError(f"{ct_len} is not the length of an attachment ciphertext")
    return full * SEGMENT + (rest - TAG if rest else 0)


def _stream_aead(key: bytes) -> AESGCM:
    if len(key) != KEY_LEN:
        raise InvalidKeyError("attachment key must be 32 bytes")
    return AESGCM(hkdf(bytes(key), salt=None, info=LABEL_ATTACHMENT, length=KEY_LEN))


def _nonce(index: int, last: bool) -> bytes:
    return index.to_bytes(11, "big") + (_LAST if last else _NOT_LAST)


def _check_index(index: int) -> None:
    if not 0 <= index < MAX_SEGMENTS:
        raise ValueError("segment index out of range")


def _segment_error(index: int, why: str = "") -> AuthenticationError:
    why = f"{why}; " if why else ""
    return AuthenticationError(
        f"failed to decrypt and authenticate payload segment {index}: {why}file may be corrupted or tampered with"
    )


class StreamEncryptor:
    """Seals single segments; stateless per index (the caller says which and whether last)."""

    def __init__(self, key: bytes):
        self._aead = _stream_aead(key)

    def segment(self, index: int, plaintext: bytes | memoryview, last: bool) -> bytes:
        _check_index(index)
        n = len(plaintext)
        if last:
            if n > SEGMENT or (n == 0 and index > 0):
                raise ValueError("a last segment holds 1..65536 bytes (0 only as segment 0)")
        elif n != SEGMENT:
            raise ValueError("a segment that is not the last holds exactly 65536 bytes")
        return self._aead.encrypt(_nonce(index, last), plaintext, b"")


class StreamDecryptor:
    """Opens single segments; stateless per index (the caller says which and whether last)."""

    def __init__(self, key: bytes):
        self._aead = _stream_aead(key)

    def segment(self, index: int, ciphertext: bytes | memoryview, last: bool) -> bytes:
        _check_index(index)
        n = len(ciphertext)
        if last:
            if not TAG <= n <= ENCRYPTED_SEGMENT:
                raise _segment_error(index, "last segment has an impossible length")
            if n == TAG and index > 0:
                raise _segment_error(index, "empty last segment after data")
        elif n != ENCRYPTED_SEGMENT:
            raise _segment_error(index, "short segment before the end")
        try:
            return self._aead.decrypt(_nonce(index, last), ciphertext, b"")
        except InvalidTag:
            raise _segment_error(index) from None


def _fill(src: BinaryIO, buf: memoryview, pos: int) -> int:
    """Read into buf[pos:] until it is full or src is at its end; return the new fill."""
    end = len(buf)
    readinto = getattr(src, "readinto", None)
    while pos < end:
        if readinto is not None:
            n = readinto(buf[pos:])
        else:
            data = src.read(end - pos)
            n = len(data)
            buf[pos : pos + n] = data
        if not n:
            break
        pos += n
    return pos


def _encrypt_runs(
    key: bytes, src: BinaryIO, start_segment: int, chunk_segments: int
) -> Iterator[tuple[memoryview, int]]:
    """Yield (ciphertext, plaintext byte count) runs of up to `chunk_segments` segments.

    The memoryview is into a buffer reused for the next run: consume it before next().
    One segment is always read ahead, so the last flag is known without the file size.
    """
    _check_index(start_segment)
    if chunk_segments < 1:
        raise ValueError("chunk_segments must be at least 1")
    aead = _stream_aead(key)
    seal = aead.encrypt_into
    capacity = (chunk_segments + 1) * SEGMENT  # a run plus the read-ahead segment
    inv = memoryview(bytearray(capacity))
    outv = memoryview(bytearray(chunk_segments * ENCRYPTED_SEGMENT))
    index = start_segment
    filled = 0
    while True:
        filled = _fill(src, inv, filled)
        if filled == capacity:
            # A full run and the read-ahead segment behind it: none of the run is last.
            for j in range(chunk_segments):
                p, c = j * SEGMENT, j * ENCRYPTED_SEGMENT
                seal(_nonce(index + j, False), inv[p : p + SEGMENT], b"", outv[c : c + ENCRYPTED_SEGMENT])
            index += chunk_segments
            yield outv, chunk_segments * SEGMENT
            inv[:SEGMENT] = inv[capacity - SEGMENT :]
            filled = SEGMENT
            continue
        # End of the file: everything left in the buffer, the final segment flagged last.
        if filled == 0:
            # Only possible before the first run. An empty file is one empty last segment;
            # resuming exactly at the end of a file of k full segments leaves nothing to do.
            if index == 0:
                seal(_nonce(0, True), inv[:0], b"", outv[:TAG])
                yield outv[:TAG], 0
            return
        nseg = -(-filled // SEGMENT)
        j = 0
        while j < nseg:
            run = min(chunk_segments, nseg - j)
            c = 0
            for k in range(j, j + run):
                p = k * SEGMENT
                n = min(SEGMENT, filled - p)
                seal(_nonce(index + k, k == nseg - 1), inv[p : p + n], b"", outv[c : c + n + TAG])
                c += n + TAG
            yield outv[:c], c - run * TAG
            j += run
        return


def encrypt_file(
    key: bytes,
    src: BinaryIO,
    dst: BinaryIO,
    *,
    start_segment: int = 0,
    progress: Callable[[int], None] | None = None,
    digest: hashlib._Hash | None = None,
) -> int:
    """Encrypt src (already positioned at segment `start_segment`) into dst.

    Updates `digest` with every ciphertext byte written, calls progress(plaintext bytes)
    per run, and returns the number of ciphertext bytes written. Memory: two buffers of
    about a megabyte, whatever the file size.
    """
    written = 0
    for ct, n_plain in _encrypt_runs(key, src, start_segment, FILE_CHUNK_SEGMENTS):
        dst.write(ct)
        if digest is not None:
            digest.update(ct)
        written += len(ct)
        if progress is not None:
            progress(n_plain)
    return written


def iter_encrypt(key: bytes, src: BinaryIO, *, start_segment: int = 0, chunk_segments: int = 128) -> Iterator[bytes]:
    """Yield the ciphertext from segment `start_segment` on (src already positioned there)
    in chunks of up to `chunk_segments` encrypted segments, for streaming uploads. The
    chunks from start_segment = k are exactly the blob's suffix from byte k * ENCRYPTED_SEGMENT."""
    for ct, _ in _encrypt_runs(key, src, start_segment, chunk_segments):
        yield bytes(ct)


def decrypt_file(
    key: bytes,
    src: BinaryIO,
    dst: BinaryIO,
    *,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Decrypt a whole blob from src into dst; return the plaintext bytes written.

    Raises AuthenticationError at the first segment that does not authenticate in its
    place; what was written before it is an authenticated prefix (see the module notes).
    """
    chunk_segments = FILE_CHUNK_SEGMENTS
    aead = _stream_aead(key)
    open_into = aead.decrypt_into
    capacity = (chunk_segments + 1) * ENCRYPTED_SEGMENT  # a run plus one read ahead
    inv = memoryview(bytearray(capacity))
    outv = memoryview(bytearray((chunk_segments + 1) * SEGMENT))
    index = 0
    filled = 0
    written = 0

    def open_segment(i: int, ct: memoryview, out: memoryview, last: bool) -> None:
        try:
            open_into(_nonce(i, last), ct, b"", out)
        except InvalidTag:
            raise _diagnose(aead, i, ct, last) from None

    while True:
        filled = _fill(src, inv, filled)
        if filled == capacity:
            for j in range(chunk_segments):
                c, p = j * ENCRYPTED_SEGMENT, j * SEGMENT
                open_segment(index + j, inv[c : c + ENCRYPTED_SEGMENT], outv[p : p + SEGMENT], False)
            index += chunk_segments
            run = outv[: chunk_segments * SEGMENT]
            dst.write(run)
            written += len(run)
            if progress is not None:
                progress(len(run))
            inv[:ENCRYPTED_SEGMENT] = inv[capacity - ENCRYPTED_SEGMENT :]
            filled = ENCRYPTED_SEGMENT
            continue
        full, rest = divmod(filled, ENCRYPTED_SEGMENT)
        if filled == 0:
            raise _segment_error(index, "no final segment (empty blob)")
        if 0 < rest < TAG:
            raise _segment_error(index + full, "segment shorter than its tag (truncated)")
        if rest == TAG and full > 0:
            raise _segment_error(index + full, "empty last segment after data")
        nseg = full + (1 if rest else 0)
        p = 0
        for k in range(nseg):
            c = k * ENCRYPTED_SEGMENT
            clen = min(ENCRYPTED_SEGMENT, filled - c)
            open_segment(index + k, inv[c : c + clen], outv[p : p + clen - TAG], k == nseg - 1)
            p += clen - TAG
        dst.write(outv[:p])
        written += p
        if progress is not None:
            progress(p)
        return written


def _diagnose(aead: AESGCM, index: int, ct: memoryview, last: bool) -> AuthenticationError:
    """Error path only: say whether the segment is genuine but out of place (a final
    segment followed by data, or a stream cut after a non-final segment)."""
    try:
        aead.decrypt(_nonce(index, not last), ct, b"")
    except InvalidTag:
        return _segment_error(index)
    if last:
        return _segment_error(index, "end reached without a final segment (truncated)")
    return _segment_error(index, "last segment followed by more data")
