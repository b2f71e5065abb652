"""The backup format (imsg/protocol/backup.py): recovery codes and their checksum,
Padmé buckets, sealing and what opening MUST reject, equal sizes for equal-length secrets
(SECURITY-TESTS 14), a decoder that raises only DecodeError on junk (R9), and key
separation from the other contexts (SECURITY-TESTS 6)."""

from __future__ import annotations

import itertools
import json
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imsg.crypto import aead
from imsg.protocol import backup as bk
from imsg.protocol.errors import DecodeError, DecryptionError
from imsg.protocol.identity import AccountKey, DeviceKeys, DeviceList, account_id_for
from imsg.protocol.stores import Contact, StoredAttachment, StoredMessage


def seeded(seed: int):
    r = random.Random(seed)
    return lambda n: bytes(r.getrandbits(8) for _ in range(n))


def contents(rng=os.urandom, name: str = "Alice", text: str = "hello") -> bk.BackupContents:
    key = AccountKey.generate(rng)
    device = DeviceKeys.generate(1, rng)
    blob = key.sign_device_list(DeviceList(key.public, 1, 1000, (device.entry(1000),)))
    bob = AccountKey.generate(rng)
    bob_list = bob.sign_device_list(DeviceList(bob.public, 3, 1000, (DeviceKeys.generate(2, rng).entry(5),)))
    contact = Contact(
        bob.account_id,
        "bob@example.com",
        bob.public,
        bob_list,
        True,
        7,
        "ok",
        rng(32),
        in_contacts=True,
        nickname="Bobby",
        profile_revision=3,
        share_profile="yes",
        shared_profile_key=rng(32),
    )
    message = StoredMessage(
        "ab" * 16, bob.account_id, "bob@example.com", "in", "bob@example.com", "alice@example.com", text, 10, 11, 2
    )
    attachment = StoredAttachment("ab" * 16, 0, "cd" * 16, rng(32), rng(32), 1234, "a.jpg", "image/jpeg")
    return bk.BackupContents(
        99,
        key.account_id,
        "alice@example.com",
        name,
        key.private,
        key.public,
        rng(32),
        blob,
        (contact,),
        (message,),
        (attachment,),
        {"retention": "1y"},
    )


# --- recovery codes ---


def test_code_round_trips_and_reads_aloud():
    for _ in range(200):
        secret = os.urandom(bk.SECRET_LEN)
        code = bk.recovery_code(secret)
        groups = code.split("-")
        assert len(groups) == 9 and all(len(g) == 4 for g in groups)
        assert set(code) <= set(bk.ALPHABET + "-")
        assert bk.parse_recovery_code(code) == secret
        assert bk.parse_recovery_code(code.lower().replace("-", " ")) == secret


def test_look_alike_characters_read_as_crockford_says():
    secret = bytes(range(20))
    code = bk.recovery_code(secret)
    typed = code.replace("0", "O").replace("1", "l")
    assert bk.parse_recovery_code(typed) == secret


def test_every_single_character_typo_and_adjacent_swap_is_caught():
    secret = os.urandom(bk.SECRET_LEN)
    chars = bk.recovery_code(secret).replace("-", "")
    caught = 0
    trials = 0
    for i in range(len(chars)):
        for c in bk.ALPHABET:
            if c == chars[i]:
                continue
            trials += 1
            try:
                bk.parse_recovery_code(chars[:i] + c + chars[i + 1 :])
            except bk.RecoveryCodeError as exc:
                assert "checksum" in str(exc)
                caught += 1
    for i in range(len(chars) - 1):
        if chars[i] != chars[i + 1]:
            trials += 1
            with pytest.raises(bk.RecoveryCodeError):
                bk.parse_recovery_code(chars[:i] + chars[i + 1] + chars[i] + chars[i + 2 :])
            caught += 1
    # A 20-bit checksum misses a typo with probability 2^-20: among these ~1,100 none.
    assert caught == trials


@pytest.mark.parametrize(
    "typed, why",
    [
        ("", "36 characters"),
        ("ABCD-" * 9, "checksum"),
        ("ABCD-" * 8, "36 characters"),
        ("U" * 36, "cannot appear"),
        ("!" + "A" * 35, "cannot appear"),
    ],
)
def test_malformed_codes_say_what_is_wrong(typed, why):
    with pytest.raises(bk.RecoveryCodeError, match=why):
        bk.parse_recovery_code(typed)


# --- keys ---


def test_keys_are_separated_by_label_and_the_access_hash_is_one_way():
    secret = bytes(20)
    token = bk.access_token(secret)
    salt = bytes(32)
    keys = {token, bk.access_hash(secret), bk._backup_key(secret, salt), bk._backup_key(secret, b"\x01" * 32)}
    assert len(keys) == 4 and all(len(k) == 32 for k in keys)
    assert bk.access_token(os.urandom(20)) != token


# --- padding ---


def test_padme_buckets():
    assert bk.padded_length(0) == bk.padded_length(bk.MIN_PADDED) == bk.MIN_PADDED
    previous = 0
    for n in itertools.chain(range(bk.MIN_PADDED, bk.MIN_PADDED + 5000, 7), (1 << 20, 3 << 22, 10**8 + 1)):
        p = bk.padded_length(n)
        assert n <= p <= n * 1.12 + 1 and p >= previous
        previous = p
        assert bk.padded_length(p) == p  # a bucket is its own bucket
    # Padmé leaks O(log log n) bits: at most 2^(floor(log2 e) + 1) sizes per doubling
    # (32 from 64 KiB to 16 MiB), not one per byte.
    for e in range(16, 24):
        sizes = {bk.padded_length(n) for n in range(1 << e, 1 << (e + 1), 101)}
        assert len(sizes) <= (1 << e.bit_length()) + 1  # + the next power of two


def test_equal_length_secrets_and_names_give_equal_sizes():
    """SECURITY-TESTS 14: backups that differ only in secret key bytes, or in an attacker-
    chosen profile name of equal length, have the same length."""
    sizes = set()
    for seed in range(5):
        for name in ("AAAAAAAAAAAAAAAA", "aaaaaaaaaaaaaaaa", "Zq9!x-Zq9!x-Zq9!"):
            doc = bk.encode_document(contents(seeded(seed), name=name))
            sizes.add(len(bk.seal_backup(os.urandom(20), doc, os.urandom)))
    assert len(sizes) == 1


def test_sizes_step_only_between_buckets():
    short = bk.seal_backup(bytes(20), b"x" * 10, os.urandom)
    longer = bk.seal_backup(bytes(20), b"x" * 60_000, os.urandom)
    assert len(short) == len(longer) == bk.HEADER_LEN + bk.MIN_PADDED + aead.TAG_LEN


# --- sealing and opening ---


def test_seal_open_round_trip_and_fresh_salt_each_time():
    secret = os.urandom(20)
    doc = bk.encode_document(contents())
    a, b = bk.seal_backup(secret, doc, os.urandom), bk.seal_backup(secret, doc, os.urandom)
    assert a != b and a[len(bk.MAGIC) : bk.HEADER_LEN] != b[len(bk.MAGIC) : bk.HEADER_LEN]
    assert bk.open_backup(secret, a) == bk.open_backup(secret, b) == doc
    assert doc not in a


def test_known_answer():
    """Fixed secret and salt: the format is pinned (a change must be a new version), and the
    formula of docs/PROTOCOL.md recomputed here with pyca primitives gives the same bytes."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    secret, salt, doc = bytes(range(20)), b"\x07" * 32, b'{"format":"imsg-backup"}'
    blob = bk.seal_backup(secret, doc, lambda n: salt[:n])
    assert bk.recovery_code(secret) == "000G-40R4-0M30-E209-185G-R38E-1W81-24GK-7QVK"
    header = b"imsgbak\x01" + salt
    key = HKDF(hashes.SHA256(), 32, salt, b"imsg/v1/backup/key").derive(secret)
    plaintext = len(doc).to_bytes(8, "big") + doc + bytes(65536 - 8 - len(doc))
    assert blob == header + AESGCM(key).encrypt(bytes(12), plaintext, b"imsg/v1/backup/ad" + header)
    assert blob[-16:].hex() == "f9ec922e028bc32baeef2f0164675775"
    access = HKDF(hashes.SHA256(), 32, None, b"imsg/v1/backup/access").derive(secret)
    assert bk.access_token(secret) == access


def test_wrong_code_and_every_changed_region_are_rejected():
    secret = os.urandom(20)
    blob = bk.seal_backup(secret, b"document", os.urandom)
    with pytest.raises(DecryptionError, match="recovery code"):
        bk.open_backup(os.urandom(20), blob)
    for i in list(range(len(bk.MAGIC) - 1, bk.HEADER_LEN + 4)) + [len(blob) // 2, len(blob) - 1]:
        changed = bytearray(blob)
        changed[i] ^= 0x40
        with pytest.raises((DecryptionError, DecodeError)):
            bk.open_backup(secret, bytes(changed))
    for cut in (blob[:-1], blob + b"\x00", blob[: bk.HEADER_LEN], b""):
        with pytest.raises((DecryptionError, DecodeError)):
            bk.open_backup(secret, cut)
    with pytest.raises(DecodeError, match="not an imsg backup"):
        bk.open_backup(secret, b"XXXXXXX" + blob[7:])
    with pytest.raises(DecodeError, match="version"):
        bk.open_backup(secret, blob[:7] + b"\x02" + blob[8:])


def test_another_contexts_ciphertext_is_not_a_backup():
    """SECURITY-TESTS 6: the same key and bytes sealed with another AD do not open."""
    secret = os.urandom(20)
    salt = os.urandom(32)
    header = bk.MAGIC + salt
    key = bk._backup_key(secret, salt)
    plaintext = (8).to_bytes(8, "big") + b"document" + bytes(bk.MIN_PADDED - 16)
    for ad in (None, b"imsg/v1/content/ad" + header, header):
        forged = header + aead.seal(key, bk.ZERO_NONCE, plaintext, ad)
        with pytest.raises(DecryptionError):
            bk.open_backup(secret, forged)
    assert (
        bk.open_backup(secret, header + aead.seal(key, bk.ZERO_NONCE, plaintext, bk.LABEL_BACKUP_AD + header))
        == b"document"
    )


def test_oversized_document_is_refused():
    with pytest.raises(ValueError):
        bk.seal_backup(bytes(20), b"x" * (bk.MAX_PLAINTEXT + 1), os.urandom)


# --- the document ---


def test_document_round_trips_without_device_secrets():
    c = contents()
    raw = bk.encode_document(c)
    assert bk.decode_document(raw) == c
    doc = json.loads(raw)
    assert set(doc) == {"format", "v", "created_at", "account", "contacts", "messages", "attachments", "settings"}
    assert set(doc["account"]) == {"account_id", "handle", "name", "account_private", "profile_key", "device_list"}
    for forbidden in ("session", "prekey", "identity_private", "signing_private", "token"):
        assert forbidden not in raw.decode()


def test_every_contact_field_is_backed_up():
    from dataclasses import fields

    doc = json.loads(bk.encode_document(contents()))
    assert set(doc["contacts"][0]) == {f.name for f in fields(Contact)}


def test_document_checks_keys_against_ids_and_signatures():
    c = contents()
    doc = json.loads(bk.encode_document(c))
    other = AccountKey.generate(os.urandom)
    for path, value in (
        (("account", "account_id"), other.account_id),
        (("contacts", 0, "account_id"), account_id_for(other.public)),
        (("contacts", 0, "device_list"), doc["account"]["device_list"]),
        (("account", "device_list"), doc["contacts"][0]["device_list"]),
        (("contacts", 0, "profile_key"), "AAAA"),
        (("contacts", 0, "verified"), "yes"),
        (("contacts", 0, "status"), "gone"),
        (("messages", 0, "dir"), "sideways"),
        (("v",), 2),
        (("format",), "zip"),
    ):
        changed = json.loads(json.dumps(doc))
        target = changed
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value
        with pytest.raises(DecodeError):
            bk.decode_document(json.dumps(changed).encode())


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20)),
            lambda inner: st.one_of(
                st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=6)
            ),
            max_leaves=20,
        ).map(lambda v: json.dumps(v).encode()),
    )
)
def test_decoder_raises_only_decode_error(raw):
    try:
        bk.decode_document(raw)
    except DecodeError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["account", "contacts", "messages", "attachments", "settings", "created_at"]),
        st.one_of(
            st.none(),
            st.integers(),
            st.text(max_size=5),
            st.lists(
                st.dictionaries(
                    st.sampled_from(["id", "dir", "peer", "account_key", "key", "index", "handle"]),
                    st.one_of(st.integers(), st.text(max_size=50), st.none()),
                    max_size=7,
                ),
                max_size=3,
            ),
            st.dictionaries(st.text(max_size=15), st.text(max_size=60), max_size=4),
        ),
    )
)
def test_decoder_on_almost_documents(fields):
    raw = json.dumps({"format": "imsg-backup", "v": 1, **fields}).encode()
    try:
        bk.decode_document(raw)
    except DecodeError:
        pass
