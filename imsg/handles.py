"""Canonical handles: normalised e-mail addresses and E.164 phone numbers.

Canonicalisation happens before anything is sent, compared, blinded or looked up, so
`Alice@Example.com` and `alice@example.com` are one handle, and `+44 20 7946 0958`,
`0044 (20) 7946-0958` and `+442079460958` are one number. Phone numbers are parsed by
`phonenumbers` (Google's libphonenumber metadata); the country code is required, since a
handle has no home region. A number must be *possible* for its country (right length), not
necessarily assigned: test ranges such as +1 555 are possible, and a handle that nobody
holds simply has no holder (a lookup finds nothing).
"""

from __future__ import annotations

import re
import unicodedata

from imsg.errors import InvalidHandleError

MAX_HANDLE_LEN = 254  # RFC 5321's limit for an address in a path
_EMAIL = re.compile(
    r"^[a-z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$"
)
_PHONE_CHARS = re.compile(r"^[+0-9\s().-]+$")
_PHONE_HINT = "phone numbers need the country code, e.g. +44 20 7946 0958"


def canonical_handle(raw: str) -> str:
    text = unicodedata.normalize("NFC", raw).strip() if isinstance(raw, str) else ""
    if not text or len(text) > MAX_HANDLE_LEN:
        raise InvalidHandleError(f"not a valid handle: {raw!r}")
    if "@" in text:
        return _email(text, raw)
    return _phone(text, raw)


def _email(text: str, raw: str) -> str:
    local, _, domain = text.rpartition("@")
    domain = domain.rstrip(".")
    try:  # internationalised domains in their ASCII (punycode) form
        domain = domain.encode("idna").decode("ascii") if not domain.isascii() else domain
    except UnicodeError:
        raise InvalidHandleError(f"not a valid e-mail address: {raw!r}") from None
    email = f"{local}@{domain}".lower()
    if (
        not _EMAIL.match(email)
        or ".." in email
        or local.startswith(".")
        or local.endswith(".")
        or len(local) > 64
        or len(email) > MAX_HANDLE_LEN
    ):
        raise InvalidHandleError(f"not a valid e-mail address: {raw!r}")
    return email


def _phone(text: str, raw: str) -> str:
    import phonenumbers

    if not _PHONE_CHARS.match(text):
        raise InvalidHandleError(f"not a valid handle: {raw!r}", hint="use an e-mail address or " + _PHONE_HINT)
    compact = re.sub(r"[\s().-]", "", text)
    if compact.startswith("00"):  # the international call prefix most countries use
        compact = "+" + compact[2:]
    if not compact.startswith("+") or compact.count("+") != 1:
        raise InvalidHandleError(f"not a valid phone number: {raw!r}", hint=_PHONE_HINT)
    try:
        number = phonenumbers.parse(compact, None)
    except phonenumbers.NumberParseException:
        raise InvalidHandleError(f"not a valid phone number: {raw!r}", hint=_PHONE_HINT) from None
    if not phonenumbers.is_possible_number(number):
        raise InvalidHandleError(f"not a possible phone number for its country: {raw!r}", hint=_PHONE_HINT)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
