"""The private lookup: who holds a handle, without the relay learning which handles were
asked about (docs/PROTOCOL.md §8a). Every send, every first message received and
`imsg lookup` go through here.

Each handle is blinded and evaluated through the relay's OPRF (RFC 9497, against the
account's rate budget); the output's tag names a k-anonymous bucket, and only the bucket's
prefix goes to the relay. The record found in the bucket is sealed under a key only the
OPRF output gives (imsg.protocol.discovery).

Whether a contact's handle was verified by the relay or only claimed, as the last lookup
said, is kept as a setting per handle, so `contacts` can mark claimed ones.
"""

from __future__ import annotations

from imsg import errors
from imsg.client.context import Context
from imsg.client.results import LookupResult
from imsg.handles import canonical_handle
from imsg.protocol import discovery
from imsg.protocol.errors import DecodeError

MAX_BATCH = 1000  # elements per evaluation request and prefixes per bucket request
UNVERIFIED = "reachable.unverified:"  # setting prefix: a contact handle only claimed, not verified


class Discovery:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    def lookup(self, handles: list[str]) -> list[LookupResult]:
        """Whether each handle is reachable by imsg, without the relay learning which
        handles were asked about (one OPRF evaluation each, against the account's budget)."""
        self.ctx.account()
        canonical = [canonical_handle(h) for h in handles]  # every usage error before any request
        found = self.holders(canonical)
        out = []
        for h in canonical:
            holder = found[h]
            out.append(
                LookupResult(
                    h, holder is not None, bool(holder and holder.verified), holder.account_id if holder else ""
                )
            )
        return out

    def holders(self, handles: list[str]) -> dict[str, discovery.Holder | None]:
        """The holder of each (canonical) handle, None for one nobody registered."""
        unique = list(dict.fromkeys(handles))
        relay = self.ctx.relay()
        outputs: dict[str, bytes] = {}
        bits = 0
        try:
            for i in range(0, len(unique), MAX_BATCH):
                chunk = [discovery.blind(h, self.ctx.rng) for h in unique[i : i + MAX_BATCH]]
                evaluated, bits = relay.evaluate([b.element for b in chunk])
                for b, e in zip(chunk, evaluated, strict=True):
                    outputs[b.handle] = discovery.finalize(b, e)
        except DecodeError as exc:
            raise errors.SecurityError(str(exc)) from None
        tags = {h: discovery.tag_of(o) for h, o in outputs.items()}
        for _ in range(2):  # once more if the relay re-sized its buckets in between
            prefixes = sorted({discovery.prefix_of(t, bits) for t in tags.values()})
            try:
                buckets: dict[int, list[tuple[bytes, bytes]]] = {}
                for i in range(0, len(prefixes), MAX_BATCH):
                    buckets.update(relay.buckets(bits, prefixes[i : i + MAX_BATCH]))
                break
            except errors.RelayRefusedError as exc:
                resized = exc.details.get("prefix_bits")
                if exc.relay_code != "prefix_bits_changed" or not isinstance(resized, int):
                    raise
                bits = resized
        else:
            raise errors.RelayRefusedError(
                "the relay keeps changing its bucket size; try again", relay_code="prefix_bits_changed"
            )
        return {
            h: discovery.open_record(outputs[h], buckets.get(discovery.prefix_of(tags[h], bits), [])) for h in unique
        }

    def holder(self, handle: str) -> discovery.Holder:
        """The holder of `handle`, or NotRegisteredError."""
        found = self.holders([handle])[handle]
        if found is None:
            raise errors.NotRegisteredError(f"{handle} is not registered with imsg", status=404, relay_code="not_found")
        return found

    def note_handle_verified(self, handle: str, verified: bool) -> None:
        self.ctx.store.set_setting(UNVERIFIED + handle, None if verified else "1")

    def handle_verified(self, handle: str) -> bool:
        return self.ctx.store.get_setting(UNVERIFIED + handle) is None
