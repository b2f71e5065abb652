"""Relay settings: read once from `IMSG_RELAY_*` environment variables into a frozen object.

Nothing here is secret today (the handle-blinding secret lives in a 0600 file in the data
directory, never in the environment), but `repr` still leaves out paths to secrets so a
settings dump in a log is harmless.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Mapping

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
    sender_certificate_hours: int = 24
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
    # Scale-out: PostgreSQL instead of SQLite, Redis pub/sub for wake-ups across workers.
    # Connection strings may carry passwords, so they never appear in repr.
    database_url: str | None = field(default=None, repr=False)
    redis_url: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port {self.port} is not between 0 and 65535")
        if not 1 <= self.retention_days <= MAX_RETENTION_DAYS:
            raise SettingsError(
                f"retention of {self.retention_days} days is not between 1 and {MAX_RETENTION_DAYS}"
            )
        if not 1 <= self.max_wait <= MAX_WAIT_SECONDS:
            raise SettingsError(f"max wait {self.max_wait} s is not between 1 and {MAX_WAIT_SECONDS}")
        if not 1 <= self.provisioning_ttl_seconds <= MAX_PROVISIONING_TTL_SECONDS:
            raise SettingsError(f"provisioning ttl {self.provisioning_ttl_seconds} s is not between"
                                f" 1 and {MAX_PROVISIONING_TTL_SECONDS}")
        if not 1 <= self.max_devices <= 1000:
            raise SettingsError(f"max devices {self.max_devices} is not between 1 and 1000")
        if not 1 <= self.blob_retention_days <= MAX_BLOB_RETENTION_DAYS:
            raise SettingsError(f"blob retention of {self.blob_retention_days} days is not "
                                f"between 1 and {MAX_BLOB_RETENTION_DAYS}")
        if not 1024 <= self.blob_part_size <= MAX_BLOB_PART_SIZE:
            raise SettingsError(f"blob part size {self.blob_part_size} is not between 1024 and "
                                f"{MAX_BLOB_PART_SIZE} bytes")
        if not 1 <= self.sender_certificate_hours <= 168:
            raise SettingsError(f"sender certificate lifetime {self.sender_certificate_hours} h is "
                                "not between 1 and 168")
        if not (self.sealed_rate > 0 and self.sealed_burst > 0):
            raise SettingsError("sealed_rate and sealed_burst must be positive")
        for name in ("max_blob", "blob_quota", "max_backup"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be at least 1 byte")
        for name in ("max_body", "max_envelope"):
            if getattr(self, name) < 1024:
                raise SettingsError(f"{name} must be at least 1024 bytes")
        for name in ("send_rate", "send_burst", "request_rate", "request_burst", "lookup_rate",
                     "lookup_burst", "register_rate", "register_burst", "provisioning_rate",
                     "provisioning_burst", "provisioning_global_rate",
                     "provisioning_global_burst", "sweep_interval"):
            if not getattr(self, name) > 0:
                raise SettingsError(f"{name} must be positive")

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
    def secret_path(self) -> Path:
        return self.secret_file if self.secret_file is not None else self.data_dir / "relay.secret"

    def with_(self, **changes: object) -> "Settings":
        return replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> "Settings":
        """Settings from `IMSG_RELAY_<FIELD>` variables; explicit overrides (CLI flags) win."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(f"IMSG_RELAY_{f.name.upper()}")
            if f.name == "data_dir":
                raw = env.get("IMSG_RELAY_DATA", raw)
            if raw is None or raw == "":
                continue
            values[f.name] = _convert(f.name, f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "data_dir" in values:
            values["data_dir"] = Path(values["data_dir"])  # type: ignore[arg-type]
        # A send rate given alone also sets its burst, so "60 per second" means what it says.
        if "send_rate" in values and "send_burst" not in values:
            values["send_burst"] = values["send_rate"]
        return cls(**values)  # type: ignore[arg-type]


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
