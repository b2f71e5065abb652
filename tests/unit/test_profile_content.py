"""The profile field of message content (issue 7): round trip, and strict decoding of a
peer's field (wrong key length, bad revision, a share policy outside a profile message)."""

from __future__ import annotations

import json

import pytest

from imsg.protocol.content import KIND_PROFILE, KIND_SYNC, KIND_TEXT, Content, ProfileShare
from imsg.protocol.errors import DecodeError

MID = "ab" * 16


def _doc(**profile) -> bytes:
    doc = json.loads(Content(MID, 5, KIND_TEXT, "a@x.org", "b@x.org", "hi").encode())
    doc["profile"] = profile
    return json.dumps(doc).encode()


def test_profile_round_trips_in_text_sync_and_profile_messages():
    share = ProfileShare(b"k" * 32, 7)
    text = Content(MID, 5, KIND_TEXT, "a@x.org", "b@x.org", "hi", profile=share)
    assert Content.decode(text.encode()) == text
    sync = Content(MID, 5, KIND_SYNC, "a@x.org", "b@x.org", "hi", "cd" * 16, b"\x06" + b"p" * 32, profile=share)
    assert Content.decode(sync.encode()) == sync
    own = Content(MID, 5, KIND_PROFILE, "a@x.org", "a@x.org", profile=ProfileShare(b"k" * 32, 8, "off"))
    assert Content.decode(own.encode()) == own
    plain = Content(MID, 5, KIND_TEXT, "a@x.org", "b@x.org", "hi")
    assert Content.decode(plain.encode()).profile is None and b"profile" not in plain.encode()


@pytest.mark.parametrize(
    "profile",
    [
        {"key": "a2V5", "rev": 1},  # 3 bytes
        {"key": "!!", "rev": 1},
        {"key": "a" * 44, "rev": -1},
        {"key": "a" * 44, "rev": True},
        {"key": "a" * 44, "rev": 1 << 63},
        {"key": "a" * 44},
        {"rev": 1},
        {"key": "a" * 44, "rev": 1, "share": "off"},  # a policy only travels to own devices
        {"key": "a" * 44, "rev": 1, "share": "everyone"},
    ],
)
def test_bad_profile_fields_are_rejected(profile):
    with pytest.raises(DecodeError):
        Content.decode(_doc(**profile))


def test_profile_message_needs_a_profile_and_a_policy():
    doc = json.loads(
        Content(MID, 5, KIND_PROFILE, "a@x.org", "a@x.org", profile=ProfileShare(b"k" * 32, 1, "ask")).encode()
    )
    del doc["profile"]["share"]
    with pytest.raises(DecodeError):
        Content.decode(json.dumps(doc).encode())
    del doc["profile"]
    with pytest.raises(DecodeError):
        Content.decode(json.dumps(doc).encode())
