"""Accounts, signed device lists and safety numbers (imsg.protocol.identity).

SECURITY-TESTS rows 4 (relay device injection) and 5 (IDs confused with keys).
"""

from __future__ import annotations

import base64
import dataclasses
import inspect

import pytest
from protocol_helpers import T0, seeded_rng

from imsg.crypto.labels import LABEL_DEVICE_LIST
from imsg.protocol.consts import MAX_DEVICES
from imsg.protocol.encoding import KEY_ED25519, encode_key
from imsg.protocol.errors import DecodeError, UntrustedIdentityError
from imsg.protocol.identity import (
    AccountKey,
    DeviceEntry,
    DeviceKeys,
    DeviceList,
    account_id_for,
    decode_device_list,
    fingerprint,
    safety_number,
    verify_device_list,
)

rng = seeded_rng(77)
ACCOUNT = AccountKey.generate(rng)
OTHER = AccountKey.generate(rng)
DEVICES = [DeviceKeys.generate(i, rng) for i in range(1, MAX_DEVICES + 2)]


def _list(devices, account=ACCOUNT, serial=1) -> DeviceList:
    return DeviceList(account.public, serial, T0, tuple(d.entry(T0) for d in devices))


def test_signed_list_verifies():
    blob = ACCOUNT.sign_device_list(_list(DEVICES[:3]))
    dl = verify_device_list(blob, ACCOUNT.public)
    assert dl.device_ids == [1, 2, 3]
    assert dl.device(2).identity_key == DEVICES[1].identity.public
    assert dl.device(9) is None


def test_list_of_max_devices_verifies():
    blob = ACCOUNT.sign_device_list(_list(DEVICES[:MAX_DEVICES]))
    assert len(verify_device_list(blob, ACCOUNT.public).devices) == MAX_DEVICES


def test_relay_adds_a_device_with_the_old_signature():
    """The relay appends its own device to Bob's list and keeps Bob's signature."""
    good = ACCOUNT.sign_device_list(_list(DEVICES[:2]))
    _, body, sig = decode_device_list(good)
    injected = _list(DEVICES[:3]).encode_body() + sig
    with pytest.raises(UntrustedIdentityError):
        verify_device_list(injected, ACCOUNT.public)


def test_relay_resigns_the_list_with_its_own_key():
    forged = OTHER.sign_device_list(_list(DEVICES[:3], account=ACCOUNT))
    with pytest.raises(UntrustedIdentityError):
        verify_device_list(forged, ACCOUNT.public)
    # and a list naming the relay's key, properly signed by it, is not Bob's
    own = OTHER.sign_device_list(_list(DEVICES[:3], account=OTHER))
    with pytest.raises(UntrustedIdentityError):
        verify_device_list(own, ACCOUNT.public)
    assert verify_device_list(own, OTHER.public).account_key == OTHER.public


def test_wrong_pinned_key():
    blob = ACCOUNT.sign_device_list(_list(DEVICES[:1]))
    with pytest.raises(UntrustedIdentityError):
        verify_device_list(blob, OTHER.public)


def test_signature_from_another_context_rejected():
    body = _list(DEVICES[:1]).encode_body()
    for context in (b"", b"imsg/v1/sig/signed-prekey", b"imsg/v1/sig/kem-prekey"):
        blob = body + ACCOUNT._key.sign(context, body)
        with pytest.raises(UntrustedIdentityError):
            verify_device_list(blob, ACCOUNT.public)
    assert verify_device_list(body + ACCOUNT._key.sign(LABEL_DEVICE_LIST, body), ACCOUNT.public)


def test_any_modified_byte_is_rejected():
    blob = ACCOUNT.sign_device_list(_list(DEVICES[:2]))
    for pos in range(len(blob)):
        bad = bytearray(blob)
        bad[pos] ^= 0x01
        with pytest.raises((UntrustedIdentityError, DecodeError)):
            verify_device_list(bytes(bad), ACCOUNT.public)


def _sign_raw(devices: list[DeviceEntry]) -> bytes:
    """Sign whatever list we like (the encoder does not validate; the decoder must)."""
    return ACCOUNT.sign_device_list(DeviceList(ACCOUNT.public, 1, T0, tuple(devices)))


@pytest.mark.parametrize("ids", [[1, 1], [2, 1], [1, 3, 2], [0, 1], [0], [5, 5, 6]])
def test_duplicate_unsorted_or_zero_ids_are_decode_errors(ids):
    entries = [dataclasses.replace(DEVICES[0].entry(T0), device_id=i) for i in ids]
    with pytest.raises(DecodeError):
        verify_device_list(_sign_raw(entries), ACCOUNT.public)


def test_too_many_or_no_devices_are_decode_errors():
    entries = [d.entry(T0) for d in DEVICES[: MAX_DEVICES + 1]]
    with pytest.raises(DecodeError):
        verify_device_list(_sign_raw(entries), ACCOUNT.public)
    with pytest.raises(DecodeError):
        verify_device_list(_sign_raw([]), ACCOUNT.public)


def test_truncated_or_trailing_bytes_are_decode_errors():
    blob = ACCOUNT.sign_device_list(_list(DEVICES[:2]))
    body = blob[:-64]
    for bad_body in (body[:-1], body + b"\x00", body[:10]):
        with pytest.raises(DecodeError):
            decode_device_list(bad_body + ACCOUNT._key.sign(LABEL_DEVICE_LIST, bad_body))
    for short in (b"", blob[:63]):
        with pytest.raises(DecodeError):
            decode_device_list(short)


# --- safety numbers and account ids (SECURITY-TESTS 5) ---


def test_safety_number_is_symmetric_and_well_formed():
    sn = safety_number(ACCOUNT.public, OTHER.public)
    assert sn == safety_number(OTHER.public, ACCOUNT.public)
    groups = sn.split(" ")
    assert len(groups) == 12 and all(len(g) == 5 and g.isdigit() for g in groups)


def test_safety_number_changes_when_either_key_changes():
    third = AccountKey.generate(seeded_rng(5)).public
    base = safety_number(ACCOUNT.public, OTHER.public)
    assert safety_number(third, OTHER.public) != base
    assert safety_number(ACCOUNT.public, third) != base
    assert safety_number(ACCOUNT.public, ACCOUNT.public) != base


def test_safety_number_takes_only_keys():
    """It is computed over the two type-tagged account keys only: there is no parameter
    through which a relay-chosen device id could enter (CVE-2022-39250)."""
    params = list(inspect.signature(safety_number).parameters)
    assert params == ["key_a", "key_b"]
    # A device whose id is the base64 of a key (or the key's bytes as an id) changes
    # nothing: the number depends only on the pinned account keys.
    sneaky_id = base64.b64encode(OTHER.public).decode()
    entry = dataclasses.replace(DEVICES[0].entry(T0), device_id=int.from_bytes(OTHER.public[:4], "big"))
    assert sneaky_id and entry.device_id
    sn = safety_number(ACCOUNT.public, OTHER.public)
    assert sn == safety_number(ACCOUNT.public, bytes(OTHER.public))
    # the tagged encoding is what is hashed: a device key that is byte-equal to an
    # account key but of another type still gives the account key's number, and
    # nothing else we hold for the device is an input
    assert safety_number(ACCOUNT.public, DEVICES[0].signing.public) != sn


def test_fingerprint_and_account_id_depend_on_the_key():
    assert fingerprint(ACCOUNT.public) != fingerprint(OTHER.public)
    assert len(fingerprint(ACCOUNT.public).split(" ")) == 8
    assert ACCOUNT.account_id == account_id_for(ACCOUNT.public) != OTHER.account_id
    assert len(ACCOUNT.account_id) == 32 and int(ACCOUNT.account_id, 16) >= 0
    assert encode_key(KEY_ED25519, ACCOUNT.public)[0] == KEY_ED25519
