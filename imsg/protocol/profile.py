"""Profiles: a name and a photo encrypted under the account's profile key (PROTOCOL.md §6c).

    key_id  = HKDF(PK, None, LABEL_PROFILE_ID  || account_id, 32)   the relay's handle on it
    k       = HKDF(PK, None, LABEL_PROFILE_KEY || account_id, 32)
    P       = u16(len(name)) || name || 0…  (256 bytes)  ||  u32(len(photo)) || photo || 0…  (bucket)
    blob    = 0x01 || key_id || u64(rev) || nonce || AEAD(k, nonce, P, LABEL_PROFILE_AD || account_id || key_id || u64(rev))

`key_id` doubles as a key commitment: AES-GCM alone does not bind a ciphertext to one key,
and a reader checks the blob's `key_id` against the one its own key derives before it
decrypts, so a blob can open under one profile key only. `account_id` in both derivations
and in the associated data binds the blob to its account: the relay cannot serve one
account's blob as another's, nor an old revision as a newer one (the reader wants at least
the revision it was told of).

The photo is never decoded: its first bytes must carry a known image signature (JPEG, PNG,
WebP, HEIC/AVIF), and that is all anyone looks at.
"""

from __future__ import annotations

import struct
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from imsg.crypto import aead, labels
from imsg.crypto.errors import AuthenticationError
from imsg.crypto.kdf import constant_time_equal, hkdf
from imsg.protocol import consts
from imsg.protocol.errors import DecodeError, DecryptionError

FORMAT_VERSION = 1
KEY_LEN = 32
_HEADER = 1 + 32 + 8 + aead.NONCE_LEN
MIN_BLOB = _HEADER + consts.PROFILE_NAME_BLOCK + 4 + aead.TAG_LEN
MAX_BLOB = _HEADER + consts.PROFILE_NAME_BLOCK + 4 + consts.PROFILE_PHOTO_MAX + aead.TAG_LEN

# Bidirectional and invisible formatting controls that could reorder or hide what a
# terminal shows next to a name (the "RTL override" trick); the zero-width joiner of emoji
# sequences is allowed.
_FORBIDDEN_FORMAT = frozenset("\u061c\u200b\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff")

# HEIF brands (ISO/IEC 23008-12) and AVIF: the `ftyp` box names one of them.
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis"})


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    photo: bytes = b""  # the image file's bytes, never decoded

    @property
    def photo_type(self) -> str:
        return (photo_type(self.photo) or "") if self.photo else ""  # "" also for a type open_ would refuse


def _u16(n: int) -> bytes:
    return struct.pack(">H", n)


def _aid(account_id: str) -> bytes:
    raw = bytes.fromhex(account_id) if len(account_id) == 32 else b""
    if len(raw) != 16:
        raise ValueError("account id must be 32 hex characters")
    return raw


def key_id(profile_key: bytes, account_id: str) -> bytes:
    """The 32 bytes the relay files a profile under; only holders of the key know it."""
    _check_key(profile_key)
    return hkdf(profile_key, salt=None, info=labels.LABEL_PROFILE_ID + _aid(account_id), length=32)


def _cipher_key(profile_key: bytes, account_id: str) -> bytes:
    return hkdf(profile_key, salt=None, info=labels.LABEL_PROFILE_KEY + _aid(account_id), length=32)


def _check_key(profile_key: bytes) -> None:
    if len(profile_key) != KEY_LEN:
        raise ValueError("a profile key is 32 bytes")


def photo_bucket(size: int) -> int:
    """The padded length of a photo of `size` bytes: 0 for none, else the next power of
    two of at least 4 KiB."""
    if size == 0:
        return 0
    bucket = consts.PROFILE_PHOTO_MIN_BUCKET
    while bucket < size:
        bucket *= 2
    return bucket


def photo_type(data: bytes) -> str | None:
    """The image type its signature bytes claim (never decoding further), or None."""
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return "image/avif" if data[8:12] in (b"avif", b"avis") else "image/heic"
    return None


def check_name(name: str) -> str:
    """A name fit to show in a terminal, or ValueError saying why not."""
    if len(name.encode("utf-8")) > consts.PROFILE_NAME_MAX_BYTES:
        raise ValueError(f"a name is at most {consts.PROFILE_NAME_MAX_BYTES} bytes of UTF-8")
    for ch in name:
        if unicodedata.category(ch) in ("Cc", "Cs") or ch in _FORBIDDEN_FORMAT:
            raise ValueError(f"a name may not hold control or formatting characters (U+{ord(ch):04X})")
    if name != name.strip():
        raise ValueError("a name may not begin or end with white space")
    return name


def check_photo(photo: bytes) -> str:
    """The photo's type, or ValueError: over the size limit, or not a JPEG/PNG/WebP/HEIC."""
    if len(photo) > consts.PROFILE_PHOTO_MAX:
        raise ValueError(f"a photo is at most {consts.PROFILE_PHOTO_MAX // 1024} KiB")
    kind = photo_type(photo)
    if kind is None:
        raise ValueError("a photo must be a JPEG, PNG, WebP or HEIC image")
    return kind


def _padded(profile: Profile) -> bytes:
    name = check_name(profile.name).encode("utf-8")
    if profile.photo:
        check_photo(profile.photo)
    block = _u16(len(name)) + name
    photo = struct.pack(">I", len(profile.photo)) + profile.photo
    return (
        block
        + bytes(consts.PROFILE_NAME_BLOCK - len(block))
        + photo
        + bytes(photo_bucket(len(profile.photo)) - len(profile.photo))
    )


def _ad(account_id: str, kid: bytes, revision: int) -> bytes:
    return labels.LABEL_PROFILE_AD + _aid(account_id) + kid + struct.pack(">Q", revision)


def seal(profile_key: bytes, account_id: str, revision: int, profile: Profile, rng: Callable[[int], bytes]) -> bytes:
    """The blob to store at the relay (ValueError on a bad name or photo)."""
    if not 0 <= revision < 1 << 63:
        raise ValueError("revision out of range")
    kid = key_id(profile_key, account_id)
    nonce = rng(aead.NONCE_LEN)
    body = aead.seal(_cipher_key(profile_key, account_id), nonce, _padded(profile), _ad(account_id, kid, revision))
    return bytes([FORMAT_VERSION]) + kid + struct.pack(">Q", revision) + nonce + body


def blob_revision(blob: bytes) -> int:
    """The revision a blob claims (authenticated only by `open_`)."""
    if len(blob) < MIN_BLOB:
        raise DecodeError("profile blob too short")
    return int.from_bytes(blob[33:41], "big")


def open_(profile_key: bytes, account_id: str, blob: bytes, *, min_revision: int = 0) -> tuple[int, Profile]:
    """(revision, profile) from a blob the relay served, after every check: length, format,
    key commitment, revision, tag, then the padded layout, the name and the photo's type.
    Raises DecodeError or DecryptionError, nothing else."""
    if not MIN_BLOB <= len(blob) <= MAX_BLOB or blob[0] != FORMAT_VERSION:
        raise DecodeError("not a profile blob (length or format version)")
    try:
        kid = key_id(profile_key, account_id)
    except ValueError:
        raise DecodeError("malformed profile key or account id") from None
    if not constant_time_equal(blob[1:33], kid):
        raise DecryptionError("profile blob is not under this profile key and account")
    revision = struct.unpack(">Q", blob[33:41])[0]
    if revision < min_revision or revision >= 1 << 63:
        raise DecryptionError("profile blob is older than the revision its owner announced")
    nonce = blob[41:_HEADER]
    try:
        plain = aead.open_(_cipher_key(profile_key, account_id), nonce, blob[_HEADER:], _ad(account_id, kid, revision))
    except AuthenticationError:
        raise DecryptionError(
            "failed to decrypt and authenticate profile: it may be corrupted or tampered with"
        ) from None
    return revision, _unpad(plain)


def _unpad(plain: bytes) -> Profile:
    block = consts.PROFILE_NAME_BLOCK
    if len(plain) < block + 4:
        raise DecodeError("profile plaintext too short")
    (name_len,) = struct.unpack(">H", plain[:2])
    if name_len > consts.PROFILE_NAME_MAX_BYTES or any(plain[2 + name_len : block]):
        raise DecodeError("profile name block is malformed")
    try:
        name = check_name(plain[2 : 2 + name_len].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise DecodeError("profile name is not a showable UTF-8 name") from None
    (photo_len,) = struct.unpack(">I", plain[block : block + 4])
    if photo_len > consts.PROFILE_PHOTO_MAX or len(plain) != block + 4 + photo_bucket(photo_len):
        raise DecodeError("profile photo length or padding is wrong")
    photo = plain[block + 4 : block + 4 + photo_len]
    if any(plain[block + 4 + photo_len :]):
        raise DecodeError("profile photo padding is not zero")
    if photo and photo_type(photo) is None:
        raise DecodeError("profile photo is not a JPEG, PNG, WebP or HEIC image")
    return Profile(name, photo)
