"""The client's discovery math against the relay's (two implementations of one formula,
PROTOCOL.md §8a), records that do not open, labels only this account can open, and a
clear error when libsodium is missing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from imsg.protocol import discovery
from imsg.protocol.errors import DecodeError
from imsg_relay import discovery as relay_discovery

KEY = relay_discovery.DiscoveryKey(bytes(range(32)))
ACCOUNT = "0123456789abcdef0123456789abcdef"


def _client_output(handle: str) -> bytes:
    b = discovery.blind(handle, os.urandom)
    evaluated, proof = KEY.evaluate_blinded([b.element])
    return discovery.finalize_all([b], evaluated, KEY.pk, proof)[0]


def test_client_and_relay_agree_on_output_tag_and_record():
    output = _client_output("+15551234567")
    assert output == KEY.output("+15551234567")
    tag = discovery.tag_of(output)
    assert tag == relay_discovery.tag_for(output)
    record = relay_discovery.seal_record(output, ACCOUNT, verified=True)
    holder = discovery.open_record(output, [(os.urandom(32), os.urandom(45)), (tag, record)])
    assert holder == discovery.Holder(ACCOUNT, True)
    assert discovery.open_record(output, [(tag, relay_discovery.seal_record(output, ACCOUNT, False))]).verified is False


def test_prefix_matches_the_relays_bucket_range():
    output = KEY.output("dana@example.com")
    tag = discovery.tag_of(output)
    for bits in (0, 1, 8, 12, 16):
        lo, hi = relay_discovery.bucket_range(discovery.prefix_of(tag, bits), bits)
        assert lo <= int.from_bytes(tag[:2], "big") <= hi


def test_forged_or_misplaced_records_do_not_open():
    output = KEY.output("erin@example.com")
    tag = discovery.tag_of(output)
    other = KEY.output("frank@example.com")
    record = relay_discovery.seal_record(output, ACCOUNT, True)
    assert discovery.open_record(output, [(tag, relay_discovery.seal_record(other, ACCOUNT, True))]) is None
    flipped = bytearray(record)
    flipped[20] ^= 1
    assert discovery.open_record(output, [(tag, bytes(flipped))]) is None
    assert discovery.open_record(output, [(tag, record[:20])]) is None
    assert discovery.open_record(other, [(tag, record)]) is None  # another handle's entry


def test_a_bad_evaluation_is_a_decode_error():
    b = discovery.blind("x@example.com", os.urandom)
    _, proof = KEY.evaluate_blinded([b.element])
    for bad in (bytes(32), b"\xff" * 32, b"\x01" * 31):
        with pytest.raises(DecodeError):
            discovery.finalize_all([b], [bad], KEY.pk, proof)


def test_an_evaluation_under_another_key_is_a_proof_error():
    b = discovery.blind("x@example.com", os.urandom)
    other = relay_discovery.DiscoveryKey(os.urandom(32))
    evaluated, proof = other.evaluate_blinded([b.element])
    with pytest.raises(discovery.ProofError):
        discovery.finalize_all([b], evaluated, KEY.pk, proof)
    assert discovery.finalize_all([b], evaluated, other.pk, proof)  # under its own key it verifies


def test_the_discovery_key_needs_a_trusted_signature():
    from imsg.crypto import sign

    sealed = sign.SigningKey(os.urandom(32))
    sig = sealed.sign(discovery.LABEL_DISCOVERY_KEY, KEY.pk)
    trusted = {"00" * 8: sealed.public}
    key = discovery.verify_discovery_key(KEY.pk, "00" * 8, sig, trusted)
    assert key.public_key == KEY.pk and key.key_id == KEY.key_id.hex()
    for args in ((KEY.pk, "11" * 8, sig), (os.urandom(32), "00" * 8, sig), (KEY.pk, "00" * 8, bytes(64))):
        with pytest.raises(DecodeError):
            discovery.verify_discovery_key(*args, trusted)


def test_client_floor_and_sub_prefixes():
    discovery.check_prefix_bits(discovery.MAX_PREFIX_BITS)
    with pytest.raises(discovery.NarrowingError):
        discovery.check_prefix_bits(discovery.MAX_PREFIX_BITS + 1)
    discovery.check_bucket(0, 1)  # one bucket: all registered handles
    discovery.check_bucket(3, discovery.MIN_BUCKET)
    with pytest.raises(discovery.NarrowingError):
        discovery.check_bucket(3, discovery.MIN_BUCKET - 1)
    assert discovery.sub_prefixes(0b101, 3, 5) == [0b10100, 0b10101, 0b10110, 0b10111]
    assert discovery.sub_prefixes(0b101, 3, 3) == [0b101]
    assert discovery.sub_prefixes(0b101, 3, 2) == [0b10]


def test_prefix_bits_keep_buckets_large():
    assert relay_discovery.prefix_bits(0) == 0
    assert relay_discovery.prefix_bits(511) == 0
    assert relay_discovery.prefix_bits(512) == 1
    assert relay_discovery.prefix_bits(100_000) == 8  # ~390 registered handles a bucket
    assert relay_discovery.prefix_bits(10**9) == relay_discovery.MAX_PREFIX_BITS
    # An honest relay never asks for more than a client accepts.
    assert relay_discovery.MAX_PREFIX_BITS <= discovery.MAX_PREFIX_BITS
    for n in (512, 5_000, 100_000, 1_000_000):
        assert n >> relay_discovery.prefix_bits(n) >= relay_discovery.MIN_BUCKET


def test_labels_open_only_under_the_account_key_and_hide_length():
    k1, k2 = os.urandom(32), os.urandom(32)
    short = discovery.seal_label(k1, "a@b.io", os.urandom)
    long = discovery.seal_label(k1, "a" * 60 + "@" + "b" * 180 + ".example", os.urandom, start=True)
    assert len(short) == len(long)
    assert discovery.open_label(k1, short) == ("a@b.io", False)
    assert discovery.open_label(k1, long)[1] is True
    for bad in (discovery.seal_label(k2, "a@b.io", os.urandom), short[:-1], b"", short[:12] + bytes(len(short) - 12)):
        with pytest.raises(DecodeError):
            discovery.open_label(k1, bad)


def test_missing_libsodium_is_a_clear_error():
    code = (
        "import sys; sys.modules['pysodium'] = None\n"
        "import imsg_oprf\n"
        "try:\n    imsg_oprf.require_libsodium()\n"
        "except imsg_oprf.LibsodiumMissing as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30).stdout
    assert "libsodium" in out and "apt-get install libsodium23" in out
