"""Relay settings: read once from `IMSG_RELAY_*` environment variables into a frozen object.

Nothing here is secret today (the handle-blinding secret lives in a 0600 file in the data
directory, never in the environment), but `repr` still leaves out paths to secrets so a
settings dump in a log is harmless.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

KIB = 1024
MIB = 1024 * KIB

# Named limits, with the reason beside each.
MAX_RETENTION_DAYS = 90  # DESIGN.md §1: undelivered envelopes are kept 30 days, 90 at most
MAX_WAIT_SECONDS = 60  # long polls longer than a minute only tie up sockets behind proxies
MAX_KEYS_PER_LIST = 100  # RELAY-API.md: one PUT /v1/keys may carry at most 100 keys a list
MAX_FETCH_LIMIT = 500  # one fetch answers at most 500 envelopes
MAX_ACK_IDS = 500  # one ack carries at most 500 ids
# One fetch answer stays under this many body bytes (then "more": true), so 500 envelopes
# of 96 KiB never become a 48 MiB response held in memory.
MAX_FETCH_BYTES = 4 * MIB
# Provisioning (device linking): a few end-to-end encrypted messages between an existing
# device and a new one. The new device's side is unauthenticated (the channel id is the
# capability), so everything about a channel is small and short-lived.
MAX_PROVISIONING_MESSAGE = 256 * KIB  # one message, decoded (a device-list + keys + history key)
MAX_PROVISIONING_QUEUED = 8  # messages waiting in one box; the exchange needs two or three
MAX_OPEN_CHANNELS = 3  # open channels per account
# The request cap of PUT /v1/provisioning/{channel}/{box}, instead of max_body: room for the
# base64 of one MAX_PROVISIONING_MESSAGE (341.4 KiB) and the JSON around it, no more.
MAX_PROVISIONING_REQUEST = 400 * KIB
MAX_PROVISIONING_TTL_SECONDS = 3600
# Attachment blobs: opaque ciphertext uploaded in parts, kept 30 days from creation.
MAX_BLOB_RETENTION_DAYS = 90  # as for envelopes: DESIGN.md §1 promises 30 days; 90 at most
MAX_BLOB_PART_SIZE = 256 * MIB  # one part is streamed to disk, never held; still bounded
BLOB_READ_CHUNK = 1 * MIB  # downloads and digests read the file this much at a time
GIB = 1024 * MIB


class SettingsError(ValueError):
    """a relay setting has a value that cannot be used"""


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8787
    data_dir: Path = Path("imsg-relay-data")
    max_body: int = 1 * MIB
    max_envelope: int = 96 * KIB
    # Messages per credential per second, and the bucket size (burst).
    send_rate: float = 60.0
    send_burst: float = 60.0
    # Every authenticated request (fetch, ack, keys...) per credential per second.
    request_rate: float = 200.0
    request_burst: float = 400.0
    # Lookups and prekey-bundle fetches per credential per second: both reveal who exists.
    lookup_rate: float = 5.0
    lookup_burst: float = 30.0
    # Account reads (GET /v1/accounts/{id}: public data, no credential) per target account,
    # and relay-wide; prekey-bundle fetches authorized by an access key, per target account.
    # Counted in memory, never by address (issue 12: recipient data is read anonymously).
    account_read_rate: float = 10.0
    account_read_burst: float = 60.0
    account_read_global_rate: float = 500.0
    account_read_global_burst: float = 1000.0
    bundle_rate: float = 5.0
    bundle_burst: float = 30.0
    # Registrations, relay-wide (there is no credential yet).
    register_rate: float = 20.0
    register_burst: float = 100.0
    # Unauthenticated provisioning requests (PUT/GET of a channel's boxes), per channel id,
    # and relay-wide. Counted in memory, never keyed by address.
    provisioning_rate: float = 10.0
    provisioning_burst: float = 60.0
    provisioning_global_rate: float = 200.0
    provisioning_global_burst: float = 400.0
    provisioning_ttl_seconds: int = 600
    # Sealed sender: sealed sends per recipient account per second (they carry no
    # credential), the lifetime of a sender certificate, and the signing-key file
    # (default: sealed-sender.keys in the data directory).
    sealed_rate: float = 20.0
    sealed_burst: float = 100.0
    # Refused sealed attempts (no or a wrong access key), per recipient, in a bucket of their
    # own: a flood of bad keys gets 429 without touching the budget of valid senders.
    sealed_refused_rate: float = 5.0
    sealed_refused_burst: float = 30.0
    # A week: clients refresh on their own schedule (1-3 days in), never just before a
    # send, so the certificate fetch says nothing about when or to whom they write.
    sender_certificate_hours: int = 168
    sealed_keys_file: Path | None = field(default=None, repr=False)
    max_devices: int = 10
    retention_days: int = 30
    sweep_interval: float = 300.0
    max_wait: int = MAX_WAIT_SECONDS
    # Attachment blobs: the largest blob, the bytes of unexpired blobs one account may hold,
    # the part size uploads are cut into, and how long a blob lives from its creation.
    max_blob: int = 100 * MIB
    blob_quota: int = 1 * GIB
    blob_part_size: int = 8 * MIB
    blob_retention_days: int = 30
    # The largest backup (ciphertext) one account may keep; one backup per account.
    max_backup: int = 256 * MIB
    secret_file: Path | None = field(default=None, repr=False)
    # Reachable handles (docs/PROTOCOL.md §8a). How codes are delivered: smtp, sms-webhook,
    # file:PATH (one "HANDLE CODE" line per code) or none (handles claimed unverified).
    verifier: str = "none"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 587
    smtp_tls: str = "starttls"  # starttls | tls | none
    smtp_user: str | None = field(default=None, repr=False)
    smtp_password: str | None = field(default=None, repr=False)
    smtp_from: str = "imsg <no-reply@localhost>"
    webhook_url: str | None = field(default=None, repr=False)  # may carry a gateway key
    webhook_template: str = '{"to": "{handle}", "text": "Your imsg code is {code}"}'
    webhook_content_type: str = "application/json"
    webhook_authorization: str | None = field(default=None, repr=False)
    max_handles: int = 10  # handles one account may hold (pending included)
    # OPRF evaluations per account: a burst for an address book, then one per 10 s. Each
    # evaluation answers "is this one handle registered?", so this bounds enumeration.
    discovery_rate: float = 0.1
    discovery_burst: float = 1000.0
    # Discovery bucket reads carry no credential (so a prefix is never joined to an
    # account): counted relay-wide, per request.
    bucket_read_rate: float = 200.0
    bucket_read_burst: float = 400.0
    # Verification codes sent, per handle and per account (in memory), and code guesses
    # per account: codes are 6 digits, so guesses are what protects them.
    code_handle_rate: float = 6 / 3600
    code_handle_burst: float = 6.0
    code_account_rate: float = 10 / 3600
    code_account_burst: float = 10.0
    code_guess_rate: float = 30 / 3600
    code_guess_burst: float = 30.0
    discovery_key_file: Path | None = field(default=None, repr=False)
    # Scale-out: PostgreSQL instead of SQLite, Redis pub/sub for wake-ups across workers.
    # Connection strings may carry passwords, so they never appear in repr.
    database_url: str | None = field(default=None, repr=False)
    redis_url: str | None = field(default=None, repr=False)
    # PostgreSQL connections per worker: concurrent transactions, so also how many commits
    # can share one WAL flush (group commit); workers x this stays under max_connections.
    database_pool: int = 32
    # Where blobs live: a directory (or file: URL), or s3://BUCKET[/PREFIX]?endpoint=URL
    # &region=R for an S3-compatible store (imsg_relay/blobs/s3.py). Default: data_dir/blobs.
    blobs_url: str | None = field(default=None, repr=False)
    # The key set every worker shares (imsg_relay/keyset.py): a file, or its text in
    # IMSG_RELAY_KEYS. Neither given: keys are made in the data directory (one worker).
    keys_file: Path | None = field(default=None, repr=False)
    keys: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port {self.port} is not between 0 and 65535")
        if not 1 <= self.retention_days <= MAX_RETENTION_DAYS:
            raise SettingsError(f"retention of {self.retention_days} days is not between 1 and {MAX_RETENTION_DAYS}")
        if not 1 <= self.max_wait <= MAX_WAIT_SECONDS:
            raise SettingsError(f"max wait {self.max_wait} s is not between 1 and {MAX_WAIT_SECONDS}")
        if not 1 <= self.provisioning_ttl_seconds <= MAX_PROVISIONING_TTL_SECONDS:
            raise SettingsError(
                f"provisioning ttl {self.provisioning_ttl_seconds} s is not between"
                f" 1 and {MAX_PROVISIONING_TTL_SECONDS}"
            )
        if not 1 <= self.max_devices <= 1000:
            raise SettingsError(f"max devices {self.max_devices} is not between 1 and 1000")
        if not 1 <= self.blob_retention_days <= MAX_BLOB_RETENTION_DAYS:
            raise SettingsError(
                f"blob retention of {self.blob_retention_days} days is not between 1 and {MAX_BLOB_RETENTION_DAYS}"
            )
        if not 1024 <= self.blob_part_size <= MAX_BLOB_PART_SIZE:
            raise SettingsError(
                f"blob part size {self.blob_part_size} is not between 1024 and {MAX_BLOB_PART_SIZE} bytes"
            )
        if not 1 <= self.sender_certificate_hours <= 168:
            raise SettingsError(
                f"sender certificate lifetime {self.sender_certificate_hours} h is not between 1 and 168"
            )
        if not (self.sealed_rate > 0 and self.sealed_burst > 0):
            raise SettingsError("sealed_rate and sealed_burst must be positive")
        for name in ("max_blob", "blob_quota", "max_backup"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be at least 1 byte")
        for name in ("max_body", "max_envelope"):
            if getattr(self, name) < 1024:
                raise SettingsError(f"{name} must be at least 1024 bytes")
        if not (
            self.verifier in ("none", "smtp", "sms-webhook")
            or (self.verifier.startswith("file:") and len(self.verifier) > 5)
        ):
            raise SettingsError(f"verifier {self.verifier!r} is not smtp, sms-webhook, file:PATH or none")
        if self.verifier == "sms-webhook" and not self.webhook_url:
            raise SettingsError("the sms-webhook verifier needs a webhook url (IMSG_RELAY_WEBHOOK_URL)")
        if self.smtp_tls not in ("starttls", "tls", "none"):
            raise SettingsError(f"smtp tls {self.smtp_tls!r} is not starttls, tls or none")
        if not 1 <= self.max_handles <= 100:
            raise SettingsError(f"max handles {self.max_handles} is not between 1 and 100")
        for name in (
            "discovery_rate",
            "discovery_burst",
            "bucket_read_rate",
            "bucket_read_burst",
            "code_handle_rate",
            "code_handle_burst",
            "code_account_rate",
            "code_account_burst",
            "code_guess_rate",
            "code_guess_burst",
        ):
            if not getattr(self, name) > 0:
                raise SettingsError(f"{name} must be positive")
        for name in (
            "send_rate",
            "send_burst",
            "request_rate",
            "request_burst",
            "lookup_rate",
            "lookup_burst",
            "register_rate",
            "register_burst",
            "account_read_rate",
            "account_read_burst",
            "account_read_global_rate",
            "account_read_global_burst",
            "bundle_rate",
            "bundle_burst",
            "sealed_refused_rate",
            "sealed_refused_burst",
            "provisioning_rate",
            "provisioning_burst",
            "provisioning_global_rate",
            "provisioning_global_burst",
            "sweep_interval",
        ):
            if not getattr(self, name) > 0:
                raise SettingsError(f"{name} must be positive")

        _check_backend_urls(self)

    @property
    def retention_ms(self) -> int:
        return self.retention_days * 86_400_000

    @property
    def blob_retention_ms(self) -> int:
        return self.blob_retention_days * 86_400_000

    @property
    def provisioning_ttl_ms(self) -> int:
        return self.provisioning_ttl_seconds * 1000

    @property
    def discovery_key_path(self) -> Path:
        return self.discovery_key_file if self.discovery_key_file is not None else self.data_dir / "discovery.key"

    @property
    def secret_path(self) -> Path:
        return self.secret_file if self.secret_file is not None else self.data_dir / "relay.secret"

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Settings from `IMSG_RELAY_<FIELD>` variables; explicit overrides (CLI flags) win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"IMSG_RELAY_{f.name.upper()}")
            if f.name == "data_dir":
                raw = env.get("IMSG_RELAY_DATA", raw)
            if raw is None or raw == "":
                continue
            values[f.name] = _convert(f.name, f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "data_dir" in values:
            values["data_dir"] = Path(values["data_dir"])
        # A send rate given alone also sets its burst, so "60 per second" means what it says.
        if "send_rate" in values and "send_burst" not in values:
            values["send_burst"] = values["send_rate"]
        return cls(**values)


def _convert(name: str, annotation: object, raw: str) -> object:
    kind = str(annotation)
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise SettingsError(f"IMSG_RELAY_{name.upper()}={raw!r} is not a number") from None
    if "Path" in kind:
        return Path(raw)
    return raw


def _check_backend_urls(s: Settings) -> None:
    """The scale-out URLs name what they are (scale-out, issue 16); never echo them: they
    may carry passwords."""
    if not 1 <= s.database_pool <= 1000:
        raise SettingsError(f"database pool {s.database_pool} is not between 1 and 1000")
    if s.database_url and not s.database_url.startswith(("postgresql://", "postgres://")):
        raise SettingsError("the database must be a postgresql:// URL (IMSG_RELAY_DATABASE_URL, --database)")
    if s.redis_url and not s.redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError("push must be a redis://, rediss:// or unix:// URL (IMSG_RELAY_REDIS_URL, --push)")
    if s.blobs_url and "://" in s.blobs_url and not s.blobs_url.startswith(("s3://", "file://")):
        raise SettingsError("blobs must be a directory, a file:// URL or s3://BUCKET (IMSG_RELAY_BLOBS_URL, --blobs)")
