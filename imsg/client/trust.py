"""Whom this device trusts: pinned identities, the device lists they sign, safety numbers.

A contact is pinned on first contact (trust on first use) by account key; its devices are
trusted only as listed in a device list that key signed, and a relay-served list is taken
only if it is not older than one already seen, so the relay can neither add a device nor
roll a removal back. A handle the relay now maps to another account is a key change:
loud, and nothing is sent to the new identity until the user trusts it.

A send to a pinned contact never looks the recipient up: a lookup a few milliseconds
before a sealed send would tell the relay whom the sender writes to. Key changes are found
instead by `recheck_due`, which `receive`/`watch` run: each contact is due at a random time
12-36 h after its last check (setting `trust.next_check:<account id>`), and the due ones
are looked up in batches padded with cover lookups to COVER_BATCH inputs, so neither the
schedule nor the batch size says who is checked (docs/PROTOCOL.md §8a). A message from a
new key claiming the handle is noticed on arrival (imsg/client/inbox.py).
"""

from __future__ import annotations

from dataclasses import replace

from imsg import errors
from imsg.client.context import Context
from imsg.client.discovery import Discovery
from imsg.client.reachable import Reachable
from imsg.client.results import ContactInfo, Verification
from imsg.client.sealed import own_contact
from imsg.handles import canonical_handle
from imsg.protocol.encoding import KEY_ED25519, decode_key
from imsg.protocol.errors import DecodeError
from imsg.protocol.errors import UntrustedIdentityError as ProtocolUntrusted
from imsg.protocol.identity import DeviceList, account_id_for, fingerprint, safety_number, verify_device_list
from imsg.protocol.stores import Contact, LocalAccount

KEY_CHANGE_POLICIES = ("hold", "accept")
NEXT_CHECK = "trust.next_check:"  # setting prefix (+ account id): when to re-verify the contact
RECHECK_MIN_MS = 12 * 3600 * 1000
RECHECK_MAX_MS = 36 * 3600 * 1000
COVER_BATCH = 8  # every background check evaluates exactly this many inputs (real + cover)


def accept_device_list(blob: bytes, account_key: bytes, seen: DeviceList | None, whose: str) -> DeviceList:
    """A relay-served device list, only if `account_key` signed it and it is not older than
    one already seen (the relay can neither add a device nor roll a removal back)."""
    try:
        devices = verify_device_list(blob, account_key)
    except (ProtocolUntrusted, DecodeError) as exc:
        raise errors.UntrustedIdentityError(f"{whose} device list from the relay is rejected: {exc}") from None
    if seen is not None and devices.serial < seen.serial:
        raise errors.UntrustedIdentityError(f"relay served an older device list of {whose} account than one seen")
    return devices


def own_devices(account: LocalAccount) -> DeviceList:
    """Our account's devices, as the list this home holds says."""
    return verify_device_list(account.device_list, account.account_public)


def contact_devices(contact: Contact) -> DeviceList:
    """A contact's devices, as the list pinned with them says."""
    return verify_device_list(contact.device_list, contact.account_key)


class Trust:
    def __init__(self, ctx: Context, discovery: Discovery, reachable: Reachable):
        self.ctx = ctx
        self.store = ctx.store
        self.discovery = discovery
        self.reachable = reachable

    # --- device lists ---

    def fetch_contact(self, account_id: str, handle: str) -> tuple[Contact, DeviceList]:
        """Fetch an account's key and signed device list; check the key matches the
        account id (so the relay cannot substitute a key) and that the key signs the list.
        Public data, fetched without a credential on a connection of its own: the relay
        cannot tell who looks whom up (issue 12)."""
        remote = self.ctx.anonymous().get_account(account_id)
        try:
            account_key = decode_key(KEY_ED25519, remote.account_key)
        except DecodeError:
            raise errors.UntrustedIdentityError("relay served a malformed account key") from None
        if account_id_for(account_key) != account_id:
            raise errors.UntrustedIdentityError("relay served an account key that does not match the account")
        known = self.store.get_contact(account_id)  # same id, so the same key: ids derive from keys
        old = verify_device_list(known.device_list, account_key) if known is not None else None
        devices = accept_device_list(remote.device_list, account_key, old, "the contact's")
        if known is not None and old is not None:
            added = set(devices.device_ids) - set(old.device_ids)
            if added and known.status == "ok":
                # Signed by the same account key: shown, but the safety number is unchanged.
                self.ctx.report(
                    "",
                    "devices_changed",
                    f"{known.handle} added a device (now {len(devices.devices)}); their safety number is unchanged",
                )
            # everything else we know of them (nickname, profile...) stays
            contact = replace(known, handle=handle or known.handle, device_list=remote.device_list)
        else:
            contact = Contact(account_id, handle, account_key, remote.device_list, first_seen=self.ctx.now_ms())
        return contact, devices

    def refresh_own_devices(self) -> DeviceList:
        """Fetch our account's signed device list; accept it only if our account key signed
        it and it is not older than the one we hold (the relay cannot add or roll back)."""
        account = self.ctx.account()
        # Anonymous too: it follows sealed sends to our own account (a 409 on a sync copy).
        remote = self.ctx.anonymous().get_account(account.account_id)
        current = own_devices(account)
        devices = accept_device_list(remote.device_list, account.account_public, current, "our own")
        if devices.serial > current.serial:
            with self.store.transaction():
                self.store.save_account(replace(account, device_list=remote.device_list))
        return devices

    # --- whom to send to ---

    def resolve(self, handle: str, on_key_change: str = "hold") -> tuple[Contact, DeviceList]:
        """The identity to send to. A pinned contact is used as it is, with no lookup (the
        background re-verification and incoming messages notice key changes). A handle
        whose identity changed holds the send (IdentityChangedError) unless the caller
        said `on_key_change="accept"`. Only a first contact is looked up (trust on first use)."""
        account = self.ctx.account()
        if handle in self.reachable.own_handle_names(account):
            return own_contact(account), own_devices(account)
        pinned = self.store.contact_by_handle(handle)  # the "ok" identity first, if any
        if pinned is not None and pinned.status != "ok":
            pinned = None  # only changed/replaced identities: nothing pinned to compare with
        if pinned is not None:
            changed = self._changed_identity(handle)
            if changed is None:
                return pinned, contact_devices(pinned)
            if on_key_change == "accept":
                self.accept_identity(changed, pinned)
                return self._pinned(changed.account_id), contact_devices(changed)
            raise _identity_changed(handle)
        holder = self.discovery.holder(handle)  # first contact: the private lookup
        self.discovery.note_handle_verified(handle, holder.verified)
        contact, devices = self.fetch_contact(holder.account_id, handle)
        with self.store.transaction():
            self.store.save_contact(replace(contact, status="ok"))
            self._schedule(contact.account_id)
        return contact, devices

    def _changed_identity(self, handle: str) -> Contact | None:
        return next((c for c in self.store.contacts() if c.handle == handle and c.status == "changed"), None)

    # --- background re-verification ---

    def _schedule(self, account_id: str) -> None:
        """The contact's next check: a uniformly random time 12-36 h from now."""
        span = RECHECK_MAX_MS - RECHECK_MIN_MS
        delay = RECHECK_MIN_MS + int.from_bytes(self.ctx.rng(8), "big") % span
        self.store.set_setting(NEXT_CHECK + account_id, str(self.ctx.now_ms() + delay))

    def due_contacts(self) -> list[Contact]:
        """Pinned contacts whose check is due; one never scheduled gets its first time now."""
        now = self.ctx.now_ms()
        account = self.ctx.account()
        due = []
        unscheduled = []
        for c in self.store.contacts():
            if c.status != "ok" or not c.handle or c.account_id == account.account_id:
                continue
            raw = self.store.get_setting(NEXT_CHECK + c.account_id)
            if raw is None or not raw.isdigit():
                unscheduled.append(c.account_id)
            elif int(raw) <= now:
                due.append(c)
        if unscheduled:
            with self.store.transaction():
                for account_id in unscheduled:
                    self._schedule(account_id)
        return due

    def recheck_due(self) -> int:
        """Look the due contacts up again (receive and watch call this), each batch padded
        with cover lookups to COVER_BATCH. A handle now held by another account marks that
        identity "changed": later sends to the handle are held. Returns how many contacts
        were checked. Relay trouble (unreachable, out of lookups) leaves them due for the
        next receive; a relay caught cheating is reported, never followed."""
        due = self.due_contacts()
        checked = 0
        for i in range(0, len(due), COVER_BATCH):
            batch = due[i : i + COVER_BATCH]
            try:
                found = self.discovery.holders([c.handle for c in batch], cover=COVER_BATCH - len(batch))
            except (errors.RelayUnavailableError, errors.RelayRefusedError):
                return checked
            except errors.SecurityError as exc:
                self.ctx.report("", "discovery_refused", f"background contact check refused: {exc}")
                return checked
            for contact in batch:
                holder = found.get(contact.handle)
                if holder is not None and holder.account_id != contact.account_id:
                    self._mark_changed(contact, holder.account_id)
                elif holder is not None:
                    self.discovery.note_handle_verified(contact.handle, holder.verified)
                with self.store.transaction():
                    self._schedule(contact.account_id)
                checked += 1
        return checked

    def _mark_changed(self, pinned: Contact, account_id: str) -> None:
        known = self.store.get_contact(account_id)
        if known is not None and known.handle == pinned.handle and known.status == "changed":
            return  # already found (and reported): sends to the handle are held
        try:
            contact, _ = self.fetch_contact(account_id, pinned.handle)
        except (errors.RelayUnavailableError, errors.RelayRefusedError, errors.SecurityError) as exc:
            self.ctx.report("", "recheck_failed", f"{pinned.handle} now maps to another account, not fetched: {exc}")
            return
        with self.store.transaction():
            self.store.save_contact(replace(contact, status="changed", verified=False))
        self.ctx.report(
            "",
            "identity_changed",
            f"the safety number with {pinned.handle} changed: the relay now maps it to another account key",
        )

    def accept_identity(self, contact: Contact, previous: Contact | None) -> None:
        """Make `contact` the pinned identity for its handle (unverified)."""
        with self.store.transaction():
            if previous is not None and previous.account_id != contact.account_id:
                self.store.save_contact(replace(previous, status="replaced"))
                self.store.reassign_messages(previous.account_id, contact.account_id)
            self.store.save_contact(replace(contact, status="ok", verified=False))
            self._schedule(contact.account_id)  # newly pinned: re-verified like any contact

    def accept_new_identity(self, handle: str) -> None:
        """`imsg trust`: a contact's changed identity becomes the pinned one (unverified)."""
        self.ctx.account()
        contact = self.newest_identity(handle)
        if contact.status == "changed":
            self.accept_identity(contact, self.store.contact_by_handle(handle))

    def newest_identity(self, handle: str) -> Contact:
        rows = [c for c in self.store.contacts() if c.handle == handle and c.status != "replaced"]
        if not rows:
            raise errors.UnknownContactError(
                f"no contact {handle}", hint=f"send them a message first: imsg send {handle} ..."
            )
        changed = [c for c in rows if c.status == "changed"]
        return changed[0] if changed else rows[0]

    def _pinned(self, account_id: str) -> Contact:
        contact = self.store.get_contact(account_id)
        if contact is None:  # saved in this same call: a store that lost it is broken
            raise errors.LocalStateError(f"contact {account_id} vanished from this home")
        return contact

    # --- what the user sees and confirms ---

    def contacts(self) -> list[ContactInfo]:
        account = self.ctx.account()
        out = []
        changed = {c.handle for c in self.store.contacts() if c.status == "changed"}
        for c in self.store.contacts():
            # One row per handle: a changed identity stands in for the one it may replace.
            if c.status == "replaced" or (c.status == "ok" and c.handle in changed):
                continue
            devices = contact_devices(c)
            state = "changed" if c.status == "changed" else ("verified" if c.verified else "unverified")
            cached = self.store.cached_profile(c.account_id)  # the name they share, as last fetched
            out.append(
                ContactInfo(
                    c.handle,
                    c.account_id,
                    state,
                    c.verified,
                    len(devices.devices),
                    fingerprint(c.account_key),
                    len(self.store.held_messages(c.handle)),
                    c.in_contacts,
                    c.nickname,
                    cached.name if cached is not None else "",
                    bool(c.shared_profile_key) and c.shared_profile_key == account.profile_key,
                    self.discovery.handle_verified(c.handle),
                )
            )
        return out

    def verify(self, handle: str, *, mark: bool = False) -> Verification:
        """The safety number with a contact; `mark=True` records that it was compared.
        For a contact whose key changed, it is the number of the new key."""
        handle = canonical_handle(handle)
        account = self.ctx.account()
        contact = self.newest_identity(handle)
        number = safety_number(account.account_public, contact.account_key)
        if mark:
            with self.store.transaction():
                if contact.status == "changed":
                    previous = self.store.contact_by_handle(handle)
                    self.accept_identity(contact, previous)
                self.store.save_contact(replace(self._pinned(contact.account_id), verified=True, status="ok"))
        return Verification(
            handle,
            number,
            mark or (contact.verified and contact.status == "ok"),
            contact.status == "changed" and not mark,
        )


def _identity_changed(handle: str) -> errors.IdentityChangedError:
    return errors.IdentityChangedError(
        f"the safety number with {handle} changed: their account key is not the one you had",
        hint=f"compare it with: imsg verify {handle}; then release held messages with: imsg trust {handle}",
        handle=handle,
    )
