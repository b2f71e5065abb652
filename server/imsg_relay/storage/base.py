"""The storage interface of the relay.

Everything is opaque bytes: the relay never parses keys, device lists or envelopes. Handles
arrive already blinded (a hash of their OPRF output under the relay's discovery key, see
imsg_relay/discovery.py) and tokens already hashed, so no implementation can keep either
by mistake. Clock readings come in as arguments (`now_ms`,
`not_before_ms`), so retention is testable with any clock.

Every method that changes state commits durably before it returns: a caller that answers
2xx after `await storage.store_envelopes(...)` may promise the envelope survives a crash.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class DeviceRef:
    account_id: str
    device_id: int


@dataclass(frozen=True, slots=True)
class Account:
    account_id: str
    account_key: bytes
    device_list: bytes
    devices: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SignedKey:
    key_id: int
    public_key: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class OneTimeKey:
    key_id: int
    public_key: bytes
    signature: bytes | None = None  # ML-KEM one-time keys are signed, X25519 ones are not


@dataclass(frozen=True, slots=True)
class Bundle:
    device_id: int
    signed_prekey: SignedKey
    one_time: OneTimeKey | None
    kem_prekey: SignedKey | None
    kem_last_resort: bool


@dataclass(frozen=True, slots=True)
class KeyCounts:
    one_time: int
    kem_one_time: int


@dataclass(frozen=True, slots=True)
class Envelope:
    message_id: str
    body: bytes
    received_at: int


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """An attachment blob's metadata; its bytes are in the blob store."""

    blob_id: str
    account_id: str
    size: int
    part_size: int
    created_at: int
    complete: bool
    sha256: bytes | None
    received: tuple[int, ...]  # part indices recorded as received (fsynced), ascending

    @property
    def parts(self) -> int:
        return -(-self.size // self.part_size)


HANDLE_STATES = ("pending", "verified", "unverified")


@dataclass(frozen=True, slots=True)
class HandleRow:
    """One handle of one account, blinded. `tag` = SHA-256(label || OPRF output): the only
    form of the handle the relay keeps. `record` is what contacts get in a discovery bucket
    (the account id, sealed under a key from the same OPRF output); `label` is the handle
    sealed by the account's own devices for each other (opaque here). Pending rows carry
    the verification code's keyed hash, expiry and wrong tries."""

    tag: bytes
    account_id: str
    state: str  # pending | verified | unverified (claimed under a relay that does not verify)
    receiving: bool
    label: bytes
    created_at: int
    record: bytes = b""
    code_hash: bytes | None = None
    code_expires_at: int = 0
    code_tries: int = 0

    @property
    def bucket(self) -> int:
        """The first 16 bits of the tag: buckets are ranges of this number."""
        return int.from_bytes(self.tag[:2], "big")

    @property
    def discoverable(self) -> bool:
        return self.state in ("verified", "unverified") and self.receiving


@dataclass(frozen=True, slots=True)
class BackupInfo:
    """An account's backup: its ciphertext is in the blob store under `blob_id` (not a row
    of `blobs`: a backup is kept until the account deletes it, it does not expire)."""

    account_id: str
    blob_id: str
    size: int
    created_at: int  # when backups were first uploaded (turned on)
    updated_at: int  # the latest upload


class SchemaTooNew(Exception):
    """the database was migrated by a newer relay than this one"""


class StorageConflict(Exception):
    """a unique value is already held: {code}"""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        # "account_exists", "handle_taken", "device_exists", "token_taken",
        # "too_many_devices", "channel_exists", "too_many_channels", "box_full",
        # "blob_exists", "blob_complete", "too_many_handles", "backup_access_taken"
        self.code = code


class AccountNotFound(Exception):
    """no such account or device"""


class ChannelNotFound(Exception):
    """no such provisioning channel, or it has expired (or, on close, is not the caller's)"""


class BlobNotFound(Exception):
    """no such blob for this account, or it has expired"""


class BlobQuotaExceeded(Exception):
    """the account's unexpired blobs and this one would pass its quota"""

    def __init__(self, used: int) -> None:
        super().__init__(f"{used} bytes in use")
        self.used = used


class DeviceMismatch(Exception):
    """the envelopes are not addressed to exactly the account's devices"""

    def __init__(self, missing: Iterable[int], extra: Iterable[int]) -> None:
        self.missing = sorted(missing)
        self.extra = sorted(extra)
        super().__init__(f"missing {self.missing}, extra {self.extra}")


class Storage(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Returns once the database answered a trivial query (readiness); raises if not."""

    def sweep_turn(self) -> AbstractAsyncContextManager[bool]:
        """Held while one retention sweep runs: True when this worker has the turn, False
        when another worker is sweeping the same database (this one skips its round), so
        several workers never sweep the same rows at once."""

    async def key_fingerprint(self, fingerprint: bytes) -> bytes:
        """Records `fingerprint` (of the relay's key set) unless one is recorded, and returns
        the recorded one: the first worker's, which every later worker must match."""

    # accounts and devices
    async def create_account(
        self,
        account_id: str,
        account_key: bytes,
        handle: HandleRow | None,
        device_list: bytes,
        device_id: int,
        token_hash: bytes,
        now_ms: int,
    ) -> None:
        """Creates the account, its first device and (in the same transaction) its first
        handle row. Raises StorageConflict("account_exists" | "handle_taken": an unverified
        claim of a handle another account holds | "token_taken")."""

    async def add_device(
        self,
        account_id: str,
        device_id: int,
        token_hash: bytes,
        device_list: bytes,
        now_ms: int,
        max_devices: int | None = None,
    ) -> None:
        """Raises StorageConflict("device_exists" | "token_taken" | "too_many_devices": the
        account already has `max_devices`), AccountNotFound. The cap is checked in the same
        transaction as the insert, so concurrent adds cannot pass it."""

    async def remove_device(self, account_id: str, device_id: int, device_list: bytes | None) -> None:
        """Removes the device, its credential, its keys and its mailbox. Raises AccountNotFound."""

    async def authenticate(self, token_hash: bytes) -> DeviceRef | None: ...

    async def get_account(self, account_id: str) -> Account | None: ...

    # reachable handles (blinded) and discovery. Nothing here is ever keyed by who asks:
    # a discovery read names only a range of buckets, and writes come only from the
    # account that owns the row.
    async def put_handle(self, row: HandleRow, max_handles: int) -> HandleRow:
        """Inserts or replaces `row` (same account and tag). An "unverified" claim of a tag
        another account holds discoverable raises StorageConflict("handle_taken"); more
        than `max_handles` rows for the account raises StorageConflict("too_many_handles")."""

    async def get_handle(self, account_id: str, tag: bytes) -> HandleRow | None: ...

    async def wrong_code(self, account_id: str, tag: bytes, max_tries: int) -> int:
        """Counts a wrong code; at `max_tries` the code is cleared. Returns tries left."""

    async def verify_handle(self, account_id: str, tag: bytes, record: bytes) -> None:
        """Marks the row verified (code cleared) and takes the tag from any other account
        that held it: whoever proves the number or address now holds it."""

    async def account_handles(self, account_id: str) -> list[HandleRow]: ...

    async def update_handle(
        self, account_id: str, tag: bytes, receiving: bool | None, label: bytes | None
    ) -> HandleRow | None: ...

    async def remove_handle(self, account_id: str, tag: bytes) -> bool: ...

    async def discovery_bucket(self, low: int, high: int) -> list[tuple[bytes, bytes]]:
        """(tag, record) of every discoverable row with `low <= bucket <= high`."""

    async def discoverable_count(self) -> int: ...

    # prekeys
    async def put_keys(
        self,
        device: DeviceRef,
        signed_prekey: SignedKey | None,
        kem_last_resort: SignedKey | None,
        one_time: Sequence[OneTimeKey],
        kem_one_time: Sequence[OneTimeKey],
    ) -> KeyCounts: ...

    async def key_counts(self, device: DeviceRef) -> KeyCounts: ...

    async def take_bundles(self, account_id: str, device_id: int | None) -> list[Bundle]:
        """One bundle per device with a signed prekey; each one-time key handed out is
        deleted in the same transaction. Raises AccountNotFound."""

    # mailboxes
    async def store_envelopes(
        self, account_id: str, message_id: str, bodies: dict[int, bytes], exclude_device: int | None, now_ms: int
    ) -> int:
        """Stores one row per device, idempotently on (account, device, message_id), after
        checking `bodies` covers exactly the account's devices less `exclude_device`.
        Returns the number of mailboxes addressed. Raises DeviceMismatch, AccountNotFound."""

    async def fetch(
        self, device: DeviceRef, limit: int, not_before_ms: int, max_bytes: int
    ) -> tuple[list[Envelope], bool]:
        """Oldest first, only rows received at or after `not_before_ms`; the bool says more
        are waiting."""

    async def ack(self, device: DeviceRef, message_ids: Sequence[str]) -> int: ...

    async def delete_expired(self, cutoff_ms: int, limit: int) -> int:
        """Deletes at most `limit` envelopes received before `cutoff_ms`; returns how many."""

    # provisioning channels (device linking). A channel row holds the creating account, so
    # that account can close it and is capped in how many it holds open; message rows hold
    # only (channel, box, bytes). A channel is live while now_ms < expires_at; every read
    # treats an expired channel as gone, before the sweeper deletes it.
    async def create_channel(self, channel: str, account_id: str, now_ms: int, expires_at: int, max_open: int) -> None:
        """Raises StorageConflict("too_many_channels") when the account holds `max_open` live
        channels, StorageConflict("channel_exists") when the id is taken."""

    async def put_provisioning(self, channel: str, box: str, body: bytes, now_ms: int, max_queued: int) -> int:
        """Queues `body` in the box; returns how many are queued there now. Raises
        ChannelNotFound, StorageConflict("box_full") when `max_queued` are waiting."""

    async def take_provisioning(self, channel: str, box: str, now_ms: int) -> bytes | None:
        """Deletes and returns the oldest message of the box (None when empty), in one
        transaction, so each message is served once. Raises ChannelNotFound."""

    async def close_channel(self, channel: str, account_id: str, now_ms: int) -> None:
        """Deletes the channel and its messages. Raises ChannelNotFound when `account_id`
        holds no live channel of that id (an expired one is deleted all the same)."""

    async def delete_expired_channels(self, now_ms: int, limit: int) -> int:
        """Deletes at most `limit` channels expired at `now_ms`, with their messages; returns
        how many channels."""

    # attachment blobs (metadata only; the bytes are in the blob store). A blob is live while
    # created_at > live_after_ms (now less the blob retention); every read treats an
    # expired blob as gone, before the sweeper deletes it. Rows hold the uploading account
    # (for its quota and its writes), never who downloads.
    async def create_blob(
        self, blob_id: str, account_id: str, size: int, part_size: int, now_ms: int, live_after_ms: int, quota: int
    ) -> None:
        """Raises BlobQuotaExceeded when the account's live blobs plus `size` pass `quota`
        (checked in the same transaction as the insert), StorageConflict("blob_exists")."""

    async def get_blob(self, blob_id: str, live_after_ms: int) -> BlobInfo | None: ...

    async def add_blob_part(self, blob_id: str, account_id: str, index: int, live_after_ms: int) -> BlobInfo:
        """Records part `index` as received (idempotent). Raises BlobNotFound (unknown,
        expired, or another account's), StorageConflict("blob_complete")."""

    async def complete_blob(self, blob_id: str, account_id: str, sha256: bytes, live_after_ms: int) -> BlobInfo:
        """Marks the blob complete with its digest; a blob already complete keeps its
        digest (idempotent). Raises BlobNotFound."""

    async def delete_blob(self, blob_id: str, account_id: str) -> bool:
        """Deletes the row (live or expired) if `account_id` uploaded it; True when it was
        live."""

    async def expired_blobs(self, live_after_ms: int, limit: int) -> list[str]:
        """At most `limit` ids of blobs created at or before `live_after_ms`, oldest first."""

    # profiles: one opaque ciphertext per account, replaced on each upload

    async def put_profile(self, account_id: str, key_id: bytes, revision: int, body: bytes, now_ms: int) -> bool:
        """Store (replacing) the account's profile, unless the one held has a higher
        revision: then nothing changes and the answer is False."""
        ...

    async def get_profile(self, account_id: str) -> tuple[bytes, bytes] | None:
        """(key_id, body) of the account's profile, if any."""
        ...

    async def delete_blobs(self, blob_ids: Sequence[str]) -> int:
        """Deletes these rows and their parts; returns how many blobs."""

    # sealed sender: per account, SHA-256 of its unidentified-access key (a verifier, so a
    # copy of the database cannot send sealed messages) and whether anyone may send sealed.
    async def get_sealed_access(self, account_id: str) -> tuple[bytes | None, bool]:
        """(verifier or None, allow_anyone); (None, False) for an account with no row."""

    async def set_sealed_access(self, account_id: str, verifier: bytes | None, allow_anyone: bool) -> None:
        """Upsert; a None verifier keeps the stored one."""

    # backups (imsg_relay/routes/backups.py). One row per account; `access_hash` is SHA-256 of a
    # token only the holder of the recovery code can derive.
    async def put_backup(self, account_id: str, access_hash: bytes, blob_id: str, size: int, now_ms: int) -> str | None:
        """Records (or replaces) the account's backup; returns the blob id it replaced.
        Raises StorageConflict("backup_access_taken") if another account has that hash."""

    async def get_backup(self, account_id: str) -> BackupInfo | None: ...

    async def backup_by_access(self, access_hash: bytes) -> BackupInfo | None: ...

    async def delete_backup(self, account_id: str) -> str | None:
        """Deletes the row; returns its blob id (None when there was none)."""

    # the privacy report (imsg_relay/privacy.py): its read-only queries, written with `?`
    # placeholders, run against the real tables.
    async def report_rows(self, query: str, params: Sequence[object]) -> list[tuple[Any, ...]]: ...
