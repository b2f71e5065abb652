"""Session repair (docs/PROTOCOL.md §5b): the bounds on retry receipts, sans I/O.

A receiver that cannot decrypt a message from a sender device sends that device, end to
end, a retry receipt naming the message; the sender re-establishes its session with the
receiver's device and re-sends that message. Both sides are bounded here, so neither a
relay that corrupts envelopes nor a peer that sends receipts can make a device send more
than a few small messages: the receiver sends at most one receipt per (sender device,
message) and `RECEIPTS_PER_DEVICE_PER_HOUR` per sender device; the sender honours one
receipt per (device, message), only for a message it sent to that account within
`RESEND_WINDOW_MS`, and at most `RESENDS_PER_DEVICE_PER_DAY` per requesting device.

The log of what was sent or honoured is kept as a small JSON object (a store setting), each
entry `[key, time]`, pruned to its window on every use.
"""

from __future__ import annotations

import json

RECEIPTS_PER_DEVICE_PER_HOUR = 5
RESENDS_PER_DEVICE_PER_DAY = 20
RESEND_WINDOW_MS = 30 * 24 * 3600 * 1000  # the relay's retention: an older message cannot be missing
_HOUR = 3600 * 1000
_DAY = 24 * _HOUR
_MAX_ENTRIES = 1000  # a bound on the log itself, whatever the clock does


class RepairLog:
    """(device, message id) pairs already handled, with when, for one side of the repair."""

    def __init__(self, entries: dict[str, list[tuple[str, int]]] | None = None):
        self.entries = entries or {}

    @classmethod
    def decode(cls, raw: str | None) -> RepairLog:
        if not raw:
            return cls()
        try:
            doc = json.loads(raw)
            entries = {
                str(device): [(str(m), int(t)) for m, t in items]
                for device, items in doc.items()
                if isinstance(items, list)
            }
        except (ValueError, TypeError, AttributeError):
            return cls()  # a damaged log only forgets: the limits start afresh
        return cls(entries)

    def encode(self) -> str:
        return json.dumps({d: [[m, t] for m, t in items] for d, items in self.entries.items() if items})

    def _allow(self, device: str, message_id: str, now: int, limit: int, window: int) -> bool:
        items = [(m, t) for m, t in self.entries.get(device, []) if now - t < window]
        if any(m == message_id for m, _ in items) or len(items) >= limit:
            self.entries[device] = items
            return False
        items.append((message_id, now))
        self.entries[device] = items[-_MAX_ENTRIES:]
        return True

    def may_send_receipt(self, device: str, message_id: str, now: int) -> bool:
        """Receiver side: one receipt per (sender device, message), a few per hour. Records it."""
        return self._allow(device, message_id, now, RECEIPTS_PER_DEVICE_PER_HOUR, _HOUR)

    def may_resend(self, device: str, message_id: str, now: int) -> bool:
        """Sender side: one re-send per (requesting device, message), a bounded number a day
        (each entry is kept the whole window, so a message is never re-sent twice). Records it."""
        items = [(m, t) for m, t in self.entries.get(device, []) if now - t < RESEND_WINDOW_MS]
        if any(m == message_id for m, _ in items):
            self.entries[device] = items
            return False
        if sum(1 for _, t in items if now - t < _DAY) >= RESENDS_PER_DEVICE_PER_DAY:
            self.entries[device] = items
            return False
        items.append((message_id, now))
        self.entries[device] = items[-_MAX_ENTRIES:]
        return True


def last_repair(log: RepairLog, device: str) -> int | None:
    """When we last re-established our session with `device` for a receipt (None: never)."""
    times = [t for _, t in log.entries.get(device, [])]
    return max(times) if times else None


def may_honour(direction: str, peer_account_id: str, sent_at: int, requester_account_id: str, now: int) -> bool:
    """A receipt names a message we sent (direction "out") to the requester's account, within
    the relay's retention: anything else is refused (it cannot be used to make us send
    something new, or to someone else)."""
    return direction == "out" and peer_account_id == requester_account_id and 0 <= now - sent_at <= RESEND_WINDOW_MS
