"""The profile blob (PROTOCOL.md §6c): round trip, padding that hides the name's length and
buckets the photo's, every byte authenticated, binding to key, account and revision, the
photo's size limit and type check, names safe to show, and a fuzz of the decoder (R9)."""

from __future__ import annotations

import hashlib
import os
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imsg.protocol import consts
from imsg.protocol import profile as pf
from imsg.protocol.errors import DecodeError, DecryptionError, ProtocolError

KEY = bytes(range(32))
ACCOUNT = "0062903c0de3f99a6473ac1f4be83084"
OTHER = "11" * 16
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100
JPEG = b"\xff\xd8\xff\xe0" + b"\x10" * 5000
WEBP = b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x01" * 40
HEIC = b"\x00\x00\x00\x18ftypheic" + b"\x02" * 40


def rng(n: int) -> bytes:
    return os.urandom(n)


def test_round_trip_with_and_without_photo():
    for profile in (pf.Profile("Ada Lovelace"), pf.Profile("", PNG), pf.Profile("Zoë 🦊‍🔥", JPEG)):
        blob = pf.seal(KEY, ACCOUNT, 3, profile, rng)
        assert pf.open_(KEY, ACCOUNT, blob, min_revision=3) == (3, profile)
        assert pf.blob_revision(blob) == 3


def test_vector():
    # The vector in docs/PROTOCOL.md §9: PK = bytes 0..31, the account id of §9, revision 1,
    # name "Ada Lovelace", no photo, nonce 12 zero bytes.
    assert pf.key_id(KEY, ACCOUNT).hex() == "b7fb9b4e3980181ddd703c5e76ee67429d0acb80985818604522a457b26793e2"
    blob = pf.seal(KEY, ACCOUNT, 1, pf.Profile("Ada Lovelace"), lambda n: bytes(n))
    assert len(blob) == 329
    assert hashlib.sha256(blob).hexdigest() == "50b05107bd152db7d0c080087689daa80a97baa8326b6f560a5e821e01442f78"
    assert pf.key_id(KEY, ACCOUNT) != pf.key_id(KEY, OTHER) != pf.key_id(b"\x01" * 32, OTHER)


def test_every_name_has_the_same_length_and_photos_fall_in_buckets():
    lengths = {
        len(pf.seal(KEY, ACCOUNT, 1, pf.Profile(name), rng)) for name in ("", "A", "Ada Lovelace", "x" * 254, "é" * 127)
    }
    assert lengths == {pf.MIN_BLOB}
    assert pf.photo_bucket(0) == 0 and pf.photo_bucket(1) == 4096 and pf.photo_bucket(4096) == 4096
    assert pf.photo_bucket(4097) == 8192 and pf.photo_bucket(consts.PROFILE_PHOTO_MAX) == consts.PROFILE_PHOTO_MAX
    small = len(pf.seal(KEY, ACCOUNT, 1, pf.Profile("a", PNG + b"\x00" * 10), rng))
    also_small = len(pf.seal(KEY, ACCOUNT, 1, pf.Profile("a", PNG + b"\x00" * 3000), rng))
    bigger = len(pf.seal(KEY, ACCOUNT, 1, pf.Profile("a", PNG + b"\x00" * 5000), rng))
    assert small == also_small == pf.MIN_BLOB + 4096 and bigger == pf.MIN_BLOB + 8192
    largest = pf.seal(KEY, ACCOUNT, 1, pf.Profile("a", JPEG[:4] + b"\x00" * (consts.PROFILE_PHOTO_MAX - 4)), rng)
    assert len(largest) == pf.MAX_BLOB


def test_photo_limits_on_set():
    for kind, data in (("image/png", PNG), ("image/jpeg", JPEG), ("image/webp", WEBP), ("image/heic", HEIC)):
        assert pf.check_photo(data) == kind
    with pytest.raises(ValueError, match="512 KiB"):
        pf.check_photo(PNG + b"\x00" * consts.PROFILE_PHOTO_MAX)
    for bad in (b"GIF89a" + b"\x00" * 50, b"<svg xmlns=", b"", b"\x00" * 100, b"MZ\x90\x00"):
        with pytest.raises(ValueError, match="JPEG, PNG, WebP or HEIC"):
            pf.check_photo(bad)
        if bad:  # an empty photo is no photo
            with pytest.raises(ValueError):
                pf.seal(KEY, ACCOUNT, 1, pf.Profile("a", bad), rng)


@pytest.mark.parametrize(
    "name", ["a\x1b[31mred", "new\nline", "\u202eevil", "nul\x00", " padded", "x" * 255, "é" * 128, "zero\u200bwidth"]
)
def test_names_unfit_for_a_terminal_are_refused(name):
    with pytest.raises(ValueError):
        pf.seal(KEY, ACCOUNT, 1, pf.Profile(name), rng)


def _forge(plain: bytes, revision: int = 1, account: str = ACCOUNT, key: bytes = KEY) -> bytes:
    """A correctly encrypted blob around any plaintext: what a malicious profile owner can make."""
    from imsg.crypto import aead

    kid = pf.key_id(key, account)
    nonce = b"\x00" * 12
    return (
        b"\x01"
        + kid
        + revision.to_bytes(8, "big")
        + nonce
        + aead.seal(pf._cipher_key(key, account), nonce, plain, pf._ad(account, kid, revision))
    )


def _plain(name: bytes, photo: bytes = b"", pad: int | None = None) -> bytes:
    block = len(name).to_bytes(2, "big") + name
    block += bytes(256 - len(block))
    bucket = pf.photo_bucket(len(photo)) if pad is None else pad
    return block + len(photo).to_bytes(4, "big") + photo + bytes(bucket - len(photo))


def test_a_well_formed_forgery_opens_and_malformed_plaintexts_do_not():
    assert pf.open_(KEY, ACCOUNT, _forge(_plain(b"ok", PNG)))[1] == pf.Profile("ok", PNG)
    bad = [
        _plain(b"\xff\xfe"),  # not UTF-8
        _plain(b"\x1b]0;title\x07"),  # terminal escape
        _plain(b"ok")[:-1],  # short
        _plain(b"ok", PNG, pad=8192),  # wrong bucket
        _plain(b"ok", b"GIF89a" + b"\x00" * 10),  # not an image type we accept
        _plain(b"ok")[:100] + b"\x01" + _plain(b"ok")[101:],  # junk in the name padding
        _plain(b"ok", PNG)[:-1] + b"\x01",  # junk in the photo padding
        (300).to_bytes(2, "big") + bytes(254) + bytes(4),  # name length past the block
    ]
    for plain in bad:
        with pytest.raises(DecodeError):
            pf.open_(KEY, ACCOUNT, _forge(plain))


def test_every_byte_is_authenticated():
    blob = pf.seal(KEY, ACCOUNT, 5, pf.Profile("Ada"), rng)
    for i in range(len(blob)):
        flipped = bytearray(blob)
        flipped[i] ^= 0x01
        with pytest.raises((DecodeError, DecryptionError)):
            pf.open_(KEY, ACCOUNT, bytes(flipped))
    for cut in (blob[:-1], blob + b"\x00", blob[: pf.MIN_BLOB - 1], b""):
        with pytest.raises((DecodeError, DecryptionError)):
            pf.open_(KEY, ACCOUNT, cut)


def test_bound_to_key_account_and_revision():
    blob = pf.seal(KEY, ACCOUNT, 5, pf.Profile("Ada"), rng)
    with pytest.raises(DecryptionError):
        pf.open_(b"\x09" * 32, ACCOUNT, blob)  # another key (e.g. the rotated one)
    with pytest.raises(DecryptionError):
        pf.open_(KEY, OTHER, blob)  # served as another account's profile
    with pytest.raises(DecryptionError):
        pf.open_(KEY, ACCOUNT, blob, min_revision=6)  # an older copy than announced
    # Rewriting the revision (and nothing else) breaks the tag.
    rewritten = blob[:33] + (9).to_bytes(8, "big") + blob[41:]
    with pytest.raises(DecryptionError):
        pf.open_(KEY, ACCOUNT, rewritten)
    # Another account's blob under the same key id is still bound to its own account id.
    other = pf.seal(KEY, OTHER, 5, pf.Profile("Eve"), rng)
    swapped = blob[:41] + other[41:]
    with pytest.raises(DecryptionError):
        pf.open_(KEY, ACCOUNT, swapped)


@given(
    st.one_of(
        st.binary(max_size=2048), st.builds(lambda i, b: _mutate(i, b), st.integers(0, 10_000), st.integers(0, 255))
    )
)
def test_open_raises_only_protocol_errors(data):
    try:
        pf.open_(KEY, ACCOUNT, data)
    except ProtocolError:
        pass


_SAMPLE = pf.seal(KEY, ACCOUNT, 2, pf.Profile("Ada", PNG), lambda n: bytes(n))


def _mutate(index: int, value: int) -> bytes:
    data = bytearray(_SAMPLE)
    data[index % len(data)] = value
    return bytes(data)


def test_forged_random_plaintexts_raise_only_decode_errors():
    r = random.Random(7)
    for _ in range(200):
        plain = bytes(r.getrandbits(8) for _ in range(r.choice([260, 261, 4356, 300])))
        try:
            pf.open_(KEY, ACCOUNT, _forge(plain))
        except DecodeError:
            pass


def test_profile_blobs_join_the_cross_context_matrix():
    """SECURITY-TESTS 6: a profile blob opens only as a profile, and no other context's
    output (ratchet, envelope, content, device list, signatures...) opens as one."""
    from test_envelope import _contexts  # the matrix of every other context

    from imsg.crypto.errors import CryptoError

    samples, decoders, states = _contexts()
    profile_blob = pf.seal(KEY, ACCOUNT, 1, pf.Profile("Ada", PNG), rng)
    before = states()
    assert pf.open_(KEY, ACCOUNT, profile_blob)[1].name == "Ada"
    for decode in decoders.values():
        with pytest.raises((ProtocolError, CryptoError)):
            decode(profile_blob)
    for blob in samples.values():
        with pytest.raises(ProtocolError):
            pf.open_(KEY, ACCOUNT, blob)
    assert states() == before
