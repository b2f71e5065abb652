"""Reachable at: the account's phone numbers and e-mail addresses, and the private lookup
(`Client` mixes this in; docs/PROTOCOL.md §8a).

The relay keeps each handle only blinded. The account's devices learn their own handles
back from the relay's list, where each row carries the handle sealed under a key from the
account key (a "label"): so `reachable list` agrees on every device, and the local
HandleStore is a cache of the last list. Lookups (`lookup`, and every send) run the RFC
9497 OPRF and read one bucket; the relay sees neither the handle nor its tag.
"""

from __future__ import annotations

from dataclasses import replace

from imsg import errors
from imsg.client.results import LookupResult
from imsg.handles import canonical_handle
from imsg.protocol import discovery
from imsg.protocol.errors import DecodeError
from imsg.protocol.stores import LocalAccount, OwnHandle

MAX_BATCH = 1000  # elements per evaluation request and prefixes per bucket request
UNVERIFIED = "reachable.unverified:"  # setting prefix: a contact handle only claimed, not verified


class ReachableMixin:
    # --- private lookup ---

    def lookup(self, handles: list[str]) -> list[LookupResult]:
        """Whether each handle is reachable by imsg, without the relay learning which
        handles were asked about (one OPRF evaluation each, against the account's budget)."""
        self._account()
        canonical = [canonical_handle(h) for h in handles]  # every usage error before any request
        found = self._private_lookup(canonical)
        return [
            LookupResult(
                h, found[h] is not None, bool(found[h] and found[h].verified), found[h].account_id if found[h] else ""
            )
            for h in canonical
        ]

    def _private_lookup(self, handles: list[str]) -> dict[str, discovery.Holder | None]:
        unique = list(dict.fromkeys(handles))
        relay = self.relay()
        outputs: dict[str, bytes] = {}
        bits = 0
        try:
            for i in range(0, len(unique), MAX_BATCH):
                chunk = [discovery.blind(h, self._rng) for h in unique[i : i + MAX_BATCH]]
                evaluated, bits = relay.evaluate([b.element for b in chunk])
                for b, e in zip(chunk, evaluated, strict=True):
                    outputs[b.handle] = discovery.finalize(b, e)
        except DecodeError as exc:
            raise errors.SecurityError(str(exc)) from None
        tags = {h: discovery.tag_of(o) for h, o in outputs.items()}
        for _ in range(2):  # once more if the relay re-sized its buckets in between
            prefixes = sorted({discovery.prefix_of(t, bits) for t in tags.values()})
            try:
                buckets: dict[int, list] = {}
                for i in range(0, len(prefixes), MAX_BATCH):
                    buckets.update(relay.buckets(bits, prefixes[i : i + MAX_BATCH]))
                break
            except errors.RelayRefusedError as exc:
                if exc.relay_code != "prefix_bits_changed" or not isinstance(exc.details.get("prefix_bits"), int):
                    raise
                bits = exc.details["prefix_bits"]
        else:
            raise errors.RelayRefusedError(
                "the relay keeps changing its bucket size; try again", relay_code="prefix_bits_changed"
            )
        return {
            h: discovery.open_record(outputs[h], buckets.get(discovery.prefix_of(tags[h], bits), [])) for h in unique
        }

    def _holder(self, handle: str) -> discovery.Holder:
        holder = self._private_lookup([handle])[handle]
        if holder is None:
            raise errors.NotRegisteredError(f"{handle} is not registered with imsg", status=404, relay_code="not_found")
        return holder

    # --- this account's handles ---

    def _label(self, account: LocalAccount, handle: str, start: bool = False) -> bytes:
        if account.account_private is None:
            return b""
        return discovery.seal_label(account.account_private, handle, self._rng, start=start)

    def reachable_list(self, *, refresh: bool = True) -> list[OwnHandle]:
        """This account's handles as the relay holds them (refreshed into the local cache)."""
        account = self._account()
        if not refresh:
            return self.store.own_handles()
        rows = self.relay().list_handles()
        start = None
        fresh: list[OwnHandle] = []
        for row in rows:
            try:
                handle_id, state = str(row["id"]), str(row["state"])
                handle, starts = discovery.open_label(account.account_private or b"", _b64(row.get("label", "")))
                handle = canonical_handle(handle)
            except (KeyError, TypeError, ValueError, DecodeError, errors.UsageError):
                continue  # a row no device of ours sealed: not shown as ours
            if state not in ("pending", "verified", "unverified"):
                continue
            if starts and state != "pending":
                start = handle
            fresh.append(
                OwnHandle(
                    handle, handle_id, state, bool(row.get("receiving", True)), False, int(row.get("added_at", 0))
                )
            )
        usable = [h.handle for h in fresh if h.state != "pending"]
        if start not in usable:
            start = account.handle if account.handle in usable else (usable[0] if usable else None)
        fresh = [replace(h, start_from=h.handle == start) for h in fresh]
        with self.store.transaction():
            for h in self.store.own_handles():
                self.store.remove_own_handle(h.handle)
            for h in fresh:
                self.store.save_own_handle(h)
            # The start-from handle is the account's handle: what whoami shows and sends use.
            if start is not None and start != account.handle:
                self.store.save_account(replace(self._account(), handle=start))
        return fresh

    def _own_handle(self, handle: str, *, refresh: bool = True) -> OwnHandle:
        handle = canonical_handle(handle)
        for h in self.reachable_list(refresh=refresh):
            if h.handle == handle:
                return h
        raise errors.LocalStateError(f"{handle} is not one of this account's handles", hint="see: imsg reachable list")

    def reachable_add(self, handle: str) -> OwnHandle:
        """Claim a handle: a verifying relay sends it a code (then `reachable_verify`); one
        that does not verify records it as claimed, unverified."""
        handle = canonical_handle(handle)
        account = self._account()
        try:
            self.relay().add_handle(handle, self._label(account, handle))
        except errors.RelayRefusedError as exc:
            if exc.relay_code == "handle_taken":
                raise errors.RelayRefusedError(
                    f"{handle} is already registered to another account", status=exc.status, relay_code="handle_taken"
                ) from None
            raise
        return self._own_handle(handle)

    def reachable_verify(self, handle: str, code: str) -> OwnHandle:
        handle = canonical_handle(handle)
        code = code.strip().replace(" ", "").replace("-", "")
        if len(code) != 6 or not (code.isascii() and code.isdigit()):
            raise errors.UsageError("a verification code is 6 digits")
        self._account()
        try:
            self.relay().verify_handle(handle, code)
        except errors.RelayRefusedError as exc:
            hints = {
                "wrong_code": "check the code, or ask for a new one: imsg reachable add " + handle,
                "no_code": "ask for a new one: imsg reachable add " + handle,
                "not_found": "add it first: imsg reachable add " + handle,
            }
            if exc.relay_code in hints:
                raise errors.RelayRefusedError(
                    str(exc), status=exc.status, relay_code=exc.relay_code, hint=hints[exc.relay_code], **exc.details
                ) from None
            raise
        return self._own_handle(handle)

    def reachable_remove(self, handle: str) -> OwnHandle:
        own = self._own_handle(handle)
        if sum(1 for h in self.store.own_handles() if h.state != "pending") <= 1 and own.state != "pending":
            raise errors.LocalStateError(
                f"{own.handle} is this account's only usable handle",
                hint="add and verify another one first, or stop receiving "
                f"at it: imsg reachable receive {own.handle} --off",
            )
        self.relay().remove_handle(own.handle_id)
        self.reachable_list()
        return own

    def reachable_start_from(self, handle: str) -> OwnHandle:
        own = self._own_handle(handle)
        if own.state == "pending":
            raise errors.LocalStateError(
                f"{own.handle} is not verified yet", hint=f"verify it first: imsg reachable verify {own.handle} CODE"
            )
        account = self._account()
        if account.account_private is None:
            raise errors.LocalStateError(
                "this device does not hold the account key", hint="choose the start-from handle on the first device"
            )
        # The choice travels in the sealed labels, so every device of the account sees it.
        for h in self.store.own_handles():
            self.relay().update_handle(
                h.handle_id,
                label=discovery.seal_label(account.account_private, h.handle, self._rng, start=h.handle == own.handle),
            )
        return self._own_handle(own.handle)

    def reachable_receive(self, handle: str, on: bool) -> OwnHandle:
        """Stop (or resume) receiving at a handle: off, it is not discoverable, and no new
        conversation can start at it; it stays the account's, verified."""
        own = self._own_handle(handle)
        self.relay().update_handle(own.handle_id, receiving=on)
        return self._own_handle(own.handle)

    def _sending_handle(self, account: LocalAccount, from_: str | None) -> str:
        """The handle a message is sent from: `from_` if given (one of ours, usable), else
        the start-from handle (kept as the account's handle)."""
        if from_ is None:
            return account.handle
        own = self._own_handle(from_)
        if own.state == "pending":
            raise errors.LocalStateError(
                f"{own.handle} is not verified yet", hint=f"verify it first: imsg reachable verify {own.handle} CODE"
            )
        return own.handle

    # Whether a contact's handle was verified by the relay or only claimed, as the last
    # lookup said: a setting per handle, so `contacts` can mark claimed ones.
    def _note_handle_verified(self, handle: str, verified: bool) -> None:
        self.store.set_setting(UNVERIFIED + handle, None if verified else "1")

    def _handle_verified(self, handle: str) -> bool:
        return self.store.get_setting(UNVERIFIED + handle) is None

    def _own_handle_names(self, account: LocalAccount) -> set[str]:
        return {account.handle} | {h.handle for h in self.store.own_handles()}


def _b64(text: str) -> bytes:
    import base64

    return base64.b64decode(text, validate=True)
