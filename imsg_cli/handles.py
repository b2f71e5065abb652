"""Canonical handles: lower-cased e-mail addresses and E.164 phone numbers.

Canonicalisation happens before anything is sent or compared, so `Alice@Example.com` and
`alice@example.com` are one handle. (Verification and full E.164 parsing with
`phonenumbers` come with the reachable-at issue.)
"""

from __future__ import annotations

import re

from imsg_cli.errors import InvalidHandleError

MAX_HANDLE_LEN = 254
_EMAIL = re.compile(r"^[a-z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$")
_PHONE_JUNK = re.compile(r"[\s().-]")
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")


def canonical_handle(raw: str) -> str:
    text = raw.strip()
    if not text or len(text) > MAX_HANDLE_LEN:
        raise InvalidHandleError(f"not a valid handle: {raw!r}")
    if "@" in text:
        email = text.lower()
        if not _EMAIL.match(email) or ".." in email:
            raise InvalidHandleError(f"not a valid e-mail address: {raw!r}")
        return email
    phone = _PHONE_JUNK.sub("", text)
    if phone.startswith("00"):
        phone = "+" + phone[2:]
    if not _E164.match(phone):
        raise InvalidHandleError(
            f"not a valid phone number: {raw!r}",
            hint="phone numbers need the country code, e.g. +44 20 7946 0958",
        )
    return phone
