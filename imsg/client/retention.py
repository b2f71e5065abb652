"""How long this home keeps messages: 30 days, 1 year, or forever (the default, as in
iMessage's "Keep Messages").

A message's age is the earlier of the sender's timestamp and the time we stored it: a
sender can make its message look older (deleted sooner) but never keep it here longer
than the setting by claiming a future time. The sweep runs whenever a client opens a home
and between polls of `watch`; when nothing is due it costs one read of the settings table
and one probe of the `messages_age` index (scripts/bench_vault measures it). Due messages
go in batches, each in its own short transaction, so a large first sweep never holds the
write lock long enough to stall a concurrent send. Deleted rows are overwritten
(`secure_delete`) and the WAL is checkpointed and truncated afterwards, so the old page
images do not linger there; the attachment files saved for the messages are removed too.
Upload records of drafts the relay has purged (30 days) go at the same time, whatever the
setting: they hold a source path and an attachment key and can no longer be used.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from imsg import errors
from imsg.protocol.stores import Store

if TYPE_CHECKING:
    from imsg.client.context import Context

SETTING = "retention"
DAY_MS = 24 * 3600 * 1000
PERIODS: dict[str, int | None] = {"30d": 30 * DAY_MS, "1y": 365 * DAY_MS, "forever": None}
DEFAULT = "forever"
BATCH = 500


def parse(value: str) -> str:
    period = value.strip().lower()
    if period not in PERIODS:
        raise errors.UsageError(f"not a retention period: {value!r}", hint="use 30d, 1y or forever")
    return period


def current(store: Store) -> str:
    value = store.get_setting(SETTING)
    return value if value in PERIODS else DEFAULT


def set_period(store: Store, value: str) -> str:
    period = parse(value)
    with store.transaction():
        store.set_setting(SETTING, None if period == DEFAULT else period)
    return period


def sweep(store: Store, now_ms: int) -> int:
    """Delete every message older than the setting, with its attachment records and the
    files saved for it, and the records of drafts the relay has purged. Returns how many
    messages were deleted."""
    purge_expired_uploads(store, now_ms)
    length = PERIODS[current(store)]
    if length is None:
        return 0
    cutoff = now_ms - length
    deleted = 0
    while True:
        due = store.messages_older_than(cutoff, BATCH)
        if not due:
            break
        with store.transaction():
            paths = store.delete_messages(due)
        remove_files(paths)
        deleted += len(due)
    if deleted:
        store.checkpoint()
    return deleted


def purge_expired_uploads(store: Store, now_ms: int) -> int:
    """Drop upload records (source path, attachment key) whose blob the relay has purged
    (30 days after upload): they can neither resume nor be sent, whatever the setting.
    Sent uploads are dropped at send time; this table holds only drafts, so it is small."""
    expired = [u.blob_id for u in store.uploads() if u.expires_at <= now_ms]
    if expired:
        with store.transaction():
            for blob_id in expired:
                store.remove_upload(blob_id)
    return len(expired)


class Retention:
    """The setting and the sweep for one client (its store and clock)."""

    def __init__(self, ctx: Context):
        self.ctx = ctx

    def apply(self) -> int:
        """Delete messages older than the setting; cheap when none are due. Returns how
        many were deleted."""
        return sweep(self.ctx.store, self.ctx.now_ms())

    def current(self) -> str:
        return current(self.ctx.store)

    def set(self, period: str) -> int:
        """Set the period and apply it now; returns how many messages that deleted."""
        set_period(self.ctx.store, period)
        return self.apply()


def remove_files(paths: list[str]) -> None:
    for path in paths:
        p = Path(path)
        try:
            p.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            pass  # e.g. a directory the user made read-only: the record is gone; the file is theirs
