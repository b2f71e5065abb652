"""Whom this device trusts: pinned identities, the device lists they sign, safety numbers.

A contact is pinned on first contact (trust on first use) by account key; its devices are
trusted only as listed in a device list that key signed, and a relay-served list is taken
only if it is not older than one already seen, so the relay can neither add a device nor
roll a removal back. A handle the relay now maps to another account is a key change:
loud, and nothing is sent to the new identity until the user trusts it.
"""

from __future__ import annotations

from dataclasses import replace

from imsg import errors
from imsg.client.context import Context
from imsg.client.discovery import Discovery
from imsg.client.reachable import Reachable
from imsg.client.results import ContactInfo, Verification
from imsg.handles import canonical_handle
from imsg.protocol.encoding import KEY_ED25519, decode_key
from imsg.protocol.errors import DecodeError
from imsg.protocol.errors import UntrustedIdentityError as ProtocolUntrusted
from imsg.protocol.identity import DeviceList, account_id_for, fingerprint, safety_number, verify_device_list
from imsg.protocol.stores import Contact, LocalAccount

KEY_CHANGE_POLICIES = ("hold", "accept")


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
        """The identity to send to. The handle is looked up on every send: if the relay now
        maps it to another account (a new account key), that is a key change — loud, and
        nothing is sent to the new identity until the user trusts it (or the caller said
        `on_key_change="accept"`)."""
        account = self.ctx.account()
        if handle in self.reachable.own_handle_names(account):
            return _own_contact(account), own_devices(account)
        pinned = self.store.contact_by_handle(handle)  # the "ok" identity first, if any
        if pinned is not None and pinned.status != "ok":
            pinned = None  # only changed/replaced identities: nothing pinned to compare with
        try:
            holder = self.discovery.holder(handle)  # the private lookup (OPRF + bucket)
            account_id = holder.account_id
            self.discovery.note_handle_verified(handle, holder.verified)
        except errors.RelayUnavailableError:
            if pinned is None:
                raise
            # Offline: send to the identity the user already trusts; the message queues
            # in the outbox and the key-change check runs again on the next send.
            return pinned, contact_devices(pinned)
        if pinned is not None and account_id == pinned.account_id:
            return pinned, contact_devices(pinned)
        contact, devices = self.fetch_contact(account_id, handle)
        if pinned is None:  # first contact: trust on first use
            with self.store.transaction():
                self.store.save_contact(replace(contact, status="ok"))
            return contact, devices
        # The handle's identity changed.
        if on_key_change == "accept":
            self.accept_identity(contact, pinned)
            return self._pinned(contact.account_id), devices
        with self.store.transaction():
            self.store.save_contact(replace(contact, status="changed", verified=False))
        raise errors.IdentityChangedError(
            f"the safety number with {handle} changed: their account key is not the one you had",
            hint=f"compare it with: imsg verify {handle}; then release held messages with: imsg trust {handle}",
            handle=handle,
        )

    def accept_identity(self, contact: Contact, previous: Contact | None) -> None:
        """Make `contact` the pinned identity for its handle (unverified)."""
        with self.store.transaction():
            if previous is not None and previous.account_id != contact.account_id:
                self.store.save_contact(replace(previous, status="replaced"))
                self.store.reassign_messages(previous.account_id, contact.account_id)
            self.store.save_contact(replace(contact, status="ok", verified=False))

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


def _own_contact(account: LocalAccount) -> Contact:
    """Our own account as a recipient (notes to self, and the sync copies)."""
    return Contact(
        account.account_id,
        account.handle,
        account.account_public,
        account.device_list,
        verified=True,
        first_seen=account.created_at,
    )
