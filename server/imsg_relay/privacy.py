"""What `GET /v1/privacy/report` reads: everything the relay holds about the caller's
account, straight from the tables (docs/RELAY-API.md, "Privacy report"; the route is in
routes/privacy.py).

Every table of the relay is either read by a section below or listed in
NOT_ACCOUNT_DATA with the reason it holds nothing about an account;
tests/relay/test_privacy_report.py lists the tables of a live SQLite and PostgreSQL
database and fails on any table in neither, so a table added later cannot be left out of
the report by accident.

Nothing is summarised away on the relay: the client computes ages and totals. Message
bodies, blob bytes and backup bytes are ciphertext the relay cannot read; the report gives
their sizes, not their contents. Token hashes are not returned (they are credentials).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from imsg_relay import schema

# Queued envelopes are listed one by one up to this many (the per-device totals always
# count all of them), so a full mailbox cannot make the report itself huge.
MAX_LISTED_ENVELOPES = 10_000


@dataclass(frozen=True)
class Section:
    name: str
    tables: tuple[str, ...]  # every table the query reads
    query: str  # `?` placeholders; the first is the account id
    columns: tuple[str, ...]


SECTIONS: tuple[Section, ...] = (
    Section(
        "account",
        ("accounts",),
        "SELECT account_id, account_key, length(device_list), created_at FROM accounts WHERE account_id = ?",
        ("account_id", "account_key", "device_list_bytes", "created_at"),
    ),
    # Handles are held only blinded: the tag (a hash of the handle's OPRF output under the
    # relay's key), the discovery record and the label sealed by the account's own devices,
    # and for a pending handle when its code expires and how many wrong tries it had (the
    # code itself only as a keyed hash, not returned: it is a credential).
    Section(
        "handles",
        ("handles",),
        "SELECT tag, state, receiving, record, label, created_at, code_expires_at, code_tries"
        " FROM handles WHERE account_id = ? ORDER BY created_at, tag",
        ("blinded", "state", "receiving", "record", "sealed_label", "created_at", "code_expires_at", "code_tries"),
    ),
    Section(
        "devices",
        ("devices",),
        "SELECT device_id, created_at FROM devices WHERE account_id = ? ORDER BY device_id",
        ("device_id", "created_at"),
    ),
    Section(
        "signed_prekeys",
        ("signed_prekeys",),
        "SELECT device_id, kind, key_id FROM signed_prekeys WHERE account_id = ? ORDER BY device_id, kind",
        ("device_id", "kind", "key_id"),
    ),
    Section(
        "one_time_prekeys",
        ("one_time_prekeys",),
        "SELECT device_id, kind, count(*) FROM one_time_prekeys WHERE account_id = ?"
        " GROUP BY device_id, kind ORDER BY device_id, kind",
        ("device_id", "kind", "count"),
    ),
    Section(
        "mailboxes",
        ("envelopes",),
        "SELECT device_id, count(*), sum(length(body)), min(received_at), max(received_at)"
        " FROM envelopes WHERE account_id = ? GROUP BY device_id ORDER BY device_id",
        ("device_id", "count", "bytes", "oldest_received_at", "newest_received_at"),
    ),
    Section(
        "envelopes",
        ("envelopes",),
        "SELECT device_id, message_id, length(body), received_at FROM envelopes"
        f" WHERE account_id = ? ORDER BY seq LIMIT {MAX_LISTED_ENVELOPES}",
        ("device_id", "message_id", "size", "received_at"),
    ),
    Section(
        "provisioning_channels",
        ("provisioning_channels", "provisioning_messages"),
        "SELECT c.channel, c.created_at, c.expires_at, count(m.seq),"
        " coalesce(sum(length(m.body)), 0) FROM provisioning_channels c"
        " LEFT JOIN provisioning_messages m ON m.channel = c.channel WHERE c.account_id = ?"
        " GROUP BY c.channel, c.created_at, c.expires_at ORDER BY c.created_at",
        ("channel", "created_at", "expires_at", "queued_messages", "queued_bytes"),
    ),
    Section(
        "blobs",
        ("blobs", "blob_parts"),
        "SELECT b.blob_id, b.size, b.part_size, b.created_at, b.complete,"
        " (SELECT count(*) FROM blob_parts p WHERE p.blob_id = b.blob_id) FROM blobs b"
        " WHERE b.account_id = ? ORDER BY b.created_at, b.blob_id",
        ("blob_id", "size", "part_size", "created_at", "complete", "parts_received"),
    ),
    # The profile ciphertext (name and photo under the profile key the relay never holds).
    Section(
        "profiles",
        ("profiles",),
        "SELECT key_id, revision, length(body), updated_at FROM profiles WHERE account_id = ?",
        ("key_id", "revision", "size", "updated_at"),
    ),
    Section(
        "backups",
        ("backups",),
        "SELECT size, created_at, updated_at FROM backups WHERE account_id = ?",
        ("size", "created_at", "updated_at"),
    ),
    # Sealed sender: whether a verifier of the access key is held (the verifier itself is
    # a credential's hash, not returned) and whether anyone may send sealed.
    Section(
        "sealed_access",
        ("sealed_access",),
        "SELECT CASE WHEN access_verifier IS NULL THEN 0 ELSE 1 END,"
        " CASE WHEN allow_anyone THEN 1 ELSE 0 END FROM sealed_access WHERE account_id = ?",
        ("access_key_set", "allow_anyone"),
    ),
)

# Tables that hold nothing about any account, each with the reason.
NOT_ACCOUNT_DATA: dict[str, str] = {
    "relay_meta": "relay-wide facts: the fingerprint of the relay's key set, nothing per account",
    "relay_schema": "the schema versions migrations applied (PostgreSQL), nothing per account",
}

COVERED_TABLES = frozenset(t for s in SECTIONS for t in s.tables)

# The report's shape: fixed fields, then one list of rows per section.
PrivacyReport = msgspec.defstruct(
    "PrivacyReport",
    [
        ("account_id", schema.AccountId),
        ("generated_at", schema.TimeMs),
        ("retention", Annotated[dict[str, int], Meta(description="the relay's retention periods, in days")]),
        ("envelopes_listed_max", int),
        *[
            (
                s.name,
                Annotated[list[dict[str, Any]], Meta(description=f"rows of {', '.join(s.tables)} for this account")],
            )
            for s in SECTIONS
        ],
    ],
)


def json_value(v: Any) -> Any:
    """A column value as JSON: bytes as base64."""
    if isinstance(v, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(v)).decode("ascii")
    return v
