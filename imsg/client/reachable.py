"""Reachable at: the account's own phone numbers and e-mail addresses (docs/PROTOCOL.md §8a).

The relay keeps each handle only blinded. The account's devices learn their own handles
back from the relay's list, where each row carries the handle sealed under a key from the
account key (a "label"): so `reachable list` agrees on every device, and the local
HandleStore is a cache of the last list. Looking up other people's handles is
imsg/client/discovery.py.
"""

from __future__ import annotations

import base64
from dataclasses import replace

from imsg import errors
from imsg.client.context import Context
from imsg.handles import canonical_handle
from imsg.protocol import discovery
from imsg.protocol.errors import DecodeError
from imsg.protocol.stores import LocalAccount, OwnHandle


class Reachable:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.store = ctx.store

    def label(self, account: LocalAccount, handle: str, start: bool = False) -> bytes:
        if account.account_private is None:
            return b""
        return discovery.seal_label(account.account_private, handle, self.ctx.rng, start=start)

    def handles(self, *, refresh: bool = True) -> list[OwnHandle]:
        """This account's handles as the relay holds them (refreshed into the local cache)."""
        account = self.ctx.account()
        if not refresh:
            return self.store.own_handles()
        rows = self.ctx.relay().list_handles()
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
                self.store.save_account(replace(self.ctx.account(), handle=start))
        return fresh

    def own_handle(self, handle: str, *, refresh: bool = True) -> OwnHandle:
        handle = canonical_handle(handle)
        for h in self.handles(refresh=refresh):
            if h.handle == handle:
                return h
        raise errors.LocalStateError(f"{handle} is not one of this account's handles", hint="see: imsg reachable list")

    def add(self, handle: str) -> OwnHandle:
        """Claim a handle: a verifying relay sends it a code (then `verify`); one
        that does not verify records it as claimed, unverified."""
        handle = canonical_handle(handle)
        account = self.ctx.account()
        try:
            self.ctx.relay().add_handle(handle, self.label(account, handle))
        except errors.RelayRefusedError as exc:
            if exc.relay_code == "handle_taken":
                raise errors.RelayRefusedError(
                    f"{handle} is already registered to another account", status=exc.status, relay_code="handle_taken"
                ) from None
            raise
        return self.own_handle(handle)

    def verify(self, handle: str, code: str) -> OwnHandle:
        handle = canonical_handle(handle)
        code = code.strip().replace(" ", "").replace("-", "")
        if len(code) != 6 or not (code.isascii() and code.isdigit()):
            raise errors.UsageError("a verification code is 6 digits")
        self.ctx.account()
        try:
            self.ctx.relay().verify_handle(handle, code)
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
        return self.own_handle(handle)

    def remove(self, handle: str) -> OwnHandle:
        own = self.own_handle(handle)
        if sum(1 for h in self.store.own_handles() if h.state != "pending") <= 1 and own.state != "pending":
            raise errors.LocalStateError(
                f"{own.handle} is this account's only usable handle",
                hint="add and verify another one first, or stop receiving "
                f"at it: imsg reachable receive {own.handle} --off",
            )
        self.ctx.relay().remove_handle(own.handle_id)
        self.handles()
        return own

    def start_from(self, handle: str) -> OwnHandle:
        own = self.own_handle(handle)
        if own.state == "pending":
            raise errors.LocalStateError(
                f"{own.handle} is not verified yet", hint=f"verify it first: imsg reachable verify {own.handle} CODE"
            )
        account = self.ctx.account()
        if account.account_private is None:
            raise errors.LocalStateError(
                "this device does not hold the account key", hint="choose the start-from handle on the first device"
            )
        # The choice travels in the sealed labels, so every device of the account sees it.
        for h in self.store.own_handles():
            self.ctx.relay().update_handle(
                h.handle_id,
                label=discovery.seal_label(
                    account.account_private, h.handle, self.ctx.rng, start=h.handle == own.handle
                ),
            )
        return self.own_handle(own.handle)

    def set_receiving(self, handle: str, on: bool) -> OwnHandle:
        """Stop (or resume) receiving at a handle: off, it is not discoverable, and no new
        conversation can start at it; it stays the account's, verified."""
        own = self.own_handle(handle)
        self.ctx.relay().update_handle(own.handle_id, receiving=on)
        return self.own_handle(own.handle)

    def sending_handle(self, account: LocalAccount, from_: str | None) -> str:
        """The handle a message is sent from: `from_` if given (one of ours, usable), else
        the start-from handle (kept as the account's handle)."""
        if from_ is None:
            return account.handle
        own = self.own_handle(from_)
        if own.state == "pending":
            raise errors.LocalStateError(
                f"{own.handle} is not verified yet", hint=f"verify it first: imsg reachable verify {own.handle} CODE"
            )
        return own.handle

    def own_handle_names(self, account: LocalAccount) -> set[str]:
        return {account.handle} | {h.handle for h in self.store.own_handles()}


def _b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)
