"""Canonical handles (E.164 through phonenumbers, normalised e-mail) and the clear usage
error every malformed one gets."""

from __future__ import annotations

import pytest

from imsg.errors import InvalidHandleError
from imsg.handles import canonical_handle


@pytest.mark.parametrize(
    "raw, canonical",
    [
        ("+15551234567", "+15551234567"),
        ("+1 (555) 123-4567", "+15551234567"),
        ("  +1.555.123.4567 ", "+15551234567"),
        ("+44 20 7946 0958", "+442079460958"),
        ("0044 20 7946 0958", "+442079460958"),
        ("+49 30 901820", "+4930901820"),
        ("Alice@Example.COM", "alice@example.com"),
        (" bob.smith+imsg@mail.example.org ", "bob.smith+imsg@mail.example.org"),
        ("carol@bücher.example", "carol@xn--bcher-kva.example"),
        ("dave@example.com.", "dave@example.com"),
    ],
)
def test_canonical_forms(raw, canonical):
    assert canonical_handle(raw) == canonical
    assert canonical_handle(canonical) == canonical  # idempotent


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "alice",
        "+1 555",
        "+4412",
        "5551234567",
        "+999 1234567",
        "+1555123456789012",
        "+1-555-CALL-NOW",
        "1+5551234567",
        "++15551234567",
        "a@b@c",
        "@example.com",
        "alice@",
        "alice@example",
        "al..ice@example.com",
        ".alice@example.com",
        "alice.@example.com",
        "alice smith@example.com",
        "alice@exa mple.com",
        "a" * 65 + "@example.com",
        "x@" + "a" * 250 + ".io",
        "alice\x00@example.com",
        "\u202eevil@example.com",
    ],
)
def test_malformed_handles_are_usage_errors(raw):
    with pytest.raises(InvalidHandleError) as exc:
        canonical_handle(raw)
    assert exc.value.exit_code == 2


def test_phone_errors_hint_at_the_country_code():
    with pytest.raises(InvalidHandleError) as exc:
        canonical_handle("555 123 4567")
    assert "country code" in (exc.value.hint or "")
