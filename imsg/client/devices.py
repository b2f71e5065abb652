"""This account's devices: the signed device list, removing a device, and linking a new
one (`imsg device add` on a device that holds the account key, `imsg device link CODE` on
the new one), plus installing an account on a new device (linked or restored from backup).

Linking runs over an end-to-end encrypted pairing channel at the relay
(imsg.protocol.provisioning): the new device sends its public keys and a fresh token, the
existing one signs it into the device list with the account key and sends back the
account (its key included), the contacts, the sharing settings and, if asked, recent
history. The relay sees two sealed boxes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from imsg import errors
from imsg.client.account import new_token, whoami
from imsg.client.context import Context
from imsg.client.discovery import Discovery
from imsg.client.prekeys import Prekeys
from imsg.client.profiles import Profiles, fields_from_link, link_fields, settings_from_link
from imsg.client.reachable import Reachable
from imsg.client.results import DeviceInfo, Pairing, WhoAmI
from imsg.client.sealed import SealedSender
from imsg.client.trust import Trust, own_devices
from imsg.handles import canonical_handle
from imsg.protocol import consts
from imsg.protocol import provisioning as prov
from imsg.protocol.errors import DecodeError, ProtocolError
from imsg.protocol.identity import (
    AccountKey,
    DeviceEntry,
    DeviceKeys,
    DeviceList,
    account_id_for,
    device_fingerprint,
    open_device_name,
    seal_device_name,
    verify_device_list,
)
from imsg.protocol.session import Address
from imsg.protocol.stores import Contact, LocalAccount, StoredAttachment, StoredMessage


class Devices:
    def __init__(
        self,
        ctx: Context,
        trust: Trust,
        profiles: Profiles,
        prekeys: Prekeys,
        sealed: SealedSender,
        reachable: Reachable,
        discovery: Discovery,
    ):
        self.discovery = discovery
        self.ctx = ctx
        self.store = ctx.store
        self.trust = trust
        self.profiles = profiles
        self.prekeys = prekeys
        self.sealed = sealed
        self.reachable = reachable

    def current(self, *, refresh: bool = True) -> list[DeviceInfo]:
        """Our account's devices, from the signed device list (refreshed from the relay)."""
        account = self.ctx.account()
        devices = self.trust.refresh_own_devices() if refresh else own_devices(account)
        account = self.ctx.account()
        return [
            DeviceInfo(
                d.device_id,
                open_device_name(account.account_private, d),
                device_fingerprint(d.identity_key),
                d.added_at,
                d.device_id == account.device_id,
            )
            for d in devices.devices
        ]

    def _sign(self, account: LocalAccount, devices: tuple[DeviceEntry, ...], current: DeviceList) -> bytes:
        key = AccountKey(_account_key(account, "add or remove devices from the first device"))
        return key.sign_device_list(DeviceList(account.account_public, current.serial + 1, self.ctx.now_ms(), devices))

    def remove(self, device_id: int) -> list[DeviceInfo]:
        """Remove a device: re-sign the list without it; the relay revokes it at once."""
        account = self.ctx.account()
        if device_id == account.device_id:
            raise errors.UsageError("cannot remove this device from itself", hint="remove it from another device")
        current = self.trust.refresh_own_devices()
        account = self.ctx.account()
        if current.device(device_id) is None:
            raise errors.LocalStateError(f"no device {device_id} in this account")
        blob = self._sign(account, tuple(d for d in current.devices if d.device_id != device_id), current)
        self.ctx.relay().remove_device(device_id, blob)
        with self.store.transaction():
            self.store.save_account(replace(account, device_list=blob))
            self.store.delete_session(Address(account.account_id, device_id))
        return self.current(refresh=False)

    def add_start(self) -> Pairing:
        """Open a pairing channel at the relay; show `Pairing.code` to the new device."""
        _account_key(self.ctx.account(), "add devices from the first device")
        if len(self.trust.refresh_own_devices().devices) >= consts.MAX_DEVICES:
            raise errors.LocalStateError(
                f"this account already has {consts.MAX_DEVICES} devices", hint="remove one first: imsg device remove ID"
            )
        channel_hex, expires_at = self.ctx.relay().open_channel()
        try:
            channel = bytes.fromhex(channel_hex)
        except ValueError:
            channel = b""
        if len(channel) != prov.CHANNEL_LEN:
            raise errors.RelayRefusedError("relay returned a malformed pairing channel", relay_code="bad_response")
        secret = self.ctx.rng(prov.SECRET_LEN)
        return Pairing(prov.make_code(channel, secret), channel, secret, expires_at)

    def add_finish(
        self, pairing: Pairing, *, timeout: float = 300, history: int = 0, name_hint: str = ""
    ) -> DeviceInfo:
        """Wait for the new device, sign it into the device list with the account key,
        register it at the relay, and send it the account, contacts and (if `history` > 0)
        that many recent messages — all end-to-end encrypted under the pairing secret."""
        relay = self.ctx.relay()
        channel_hex = pairing.channel.hex()
        deadline = time.monotonic() + timeout
        box = None
        try:
            while box is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise errors.LocalStateError(
                        "no device linked before the timeout", hint="run imsg device add again for a new code"
                    )
                try:
                    box = relay.get_box(channel_hex, prov.TO_EXISTING, wait=min(left, 30))
                except errors.RelayRefusedError as exc:
                    if exc.status == 404:
                        raise errors.LocalStateError(
                            "the pairing code expired before a device linked",
                            hint="run imsg device add again for a new code",
                        ) from None
                    raise
            try:
                hello = prov.open_box(pairing.secret, pairing.channel, prov.TO_EXISTING, 0, box)
                identity_key = prov.unb64(hello, "identity_key", 32)
                signing_key = prov.unb64(hello, "signing_key", 32)
                token = prov.field(hello, "token", str)
                name = prov.field(hello, "name", str)[:64] or name_hint
                sealed_key = prov.unb64(hello, "sealed_key", 1216) if hello.get("sealed_key") else b""
            except ProtocolError as exc:
                raise errors.SecurityError(f"pairing failed: {exc}") from None
            account = self.ctx.account()
            current = self.trust.refresh_own_devices()
            account = self.ctx.account()
            account_private = _account_key(account, "add devices from the first device")
            now = self.ctx.now_ms()
            device_id, blob = self.list_with_device(
                account_private, current, identity_key, signing_key, name, sealed_key
            )
            relay.add_device(device_id, token, blob)
            with self.store.transaction():
                self.store.save_account(replace(account, device_list=blob))
            welcome = {
                "v": 1,
                "account_id": account.account_id,
                "handle": account.handle,
                "name": account.name,
                "account_private": prov.b64(account_private),
                "device_id": device_id,
                "device_list": prov.b64(blob),
                "relay": relay.base_url,
                "profile_key": prov.b64(account.profile_key),
                "contacts": [
                    {
                        "account_id": c.account_id,
                        "handle": c.handle,
                        "account_key": prov.b64(c.account_key),
                        "device_list": prov.b64(c.device_list),
                        "verified": c.verified,
                        "status": c.status,
                        "profile_key": prov.b64(c.profile_key),
                        **link_fields(c),
                    }
                    for c in self.store.contacts()
                    if c.status != "replaced"
                ],
                **self.profiles.link_settings(),
                "discovery": self.discovery.link_settings(),
                "history": self._history(history),
            }
            relay.put_box(
                channel_hex, prov.TO_NEW, prov.seal_box(pairing.secret, pairing.channel, prov.TO_NEW, 0, welcome)
            )
            # Closing the channel deletes what it holds: wait for the new device to say it
            # has the welcome (or for a short timeout) before closing.
            ack_deadline = time.monotonic() + min(60.0, max(5.0, deadline - time.monotonic()))
            while time.monotonic() < ack_deadline:
                ack = relay.get_box(channel_hex, prov.TO_EXISTING, wait=min(30, ack_deadline - time.monotonic()))
                if ack is not None:
                    try:
                        prov.open_box(pairing.secret, pairing.channel, prov.TO_EXISTING, 1, ack)
                        break
                    except ProtocolError:
                        continue  # not our peer's: keep waiting for the real acknowledgement
        finally:
            try:
                relay.close_channel(channel_hex)
            except errors.ImsgError:
                pass  # it expires on its own
        return DeviceInfo(device_id, name, device_fingerprint(identity_key), now, False)

    def list_with_device(
        self,
        account_private: bytes,
        current: DeviceList,
        identity_key: bytes,
        signing_key: bytes,
        name: str,
        sealed_key: bytes = b"",
    ) -> tuple[int, bytes]:
        """`current` with one new device, signed by the account key: (its id, the list).
        Never reuses a removed device's id: a contact holding the older list would see
        the same ids, get no 409, and encrypt to the removed device's key. Every id ever
        added is at most the serial of the list that added it, and serials only grow."""
        device_id = max(max(current.device_ids), current.serial) + 1
        entry = DeviceEntry(
            device_id,
            identity_key,
            signing_key,
            self.ctx.now_ms(),
            seal_device_name(account_private, device_id, name, self.ctx.rng),
            sealed_key,
        )
        key = AccountKey(account_private)
        devices = DeviceList(key.public, current.serial + 1, self.ctx.now_ms(), current.devices + (entry,))
        return device_id, key.sign_device_list(devices)

    def install_account(
        self,
        account: LocalAccount,
        contacts: Iterable[Contact],
        messages: Sequence[StoredMessage],
        attachments: Iterable[StoredAttachment] = (),
        settings: dict[str, str] | None = None,
    ) -> WhoAmI:
        """A new device's first state (linked or restored), in one transaction; then its
        prekeys go to the relay. Old messages arrive already shown."""
        with self.store.transaction():
            self.store.save_account(account)
            for contact in contacts:
                self.store.save_contact(contact)
            for m in messages:
                self.store.add_message(m)
            self.store.mark_shown([m.message_id for m in messages])
            self.store.add_attachments(list(attachments))
            for key, value in (settings or {}).items():
                self.store.set_setting(key, value)
        self.ctx.use_relay(None)  # the next relay() carries this device's token
        self.prekeys.maintain(force=True)
        self.sealed.pin_relay_keys()
        self.discovery.pin_key()  # signed by a sealed-sender key this device trusts
        self.reachable.handles()  # the account's handles, as every device lists them
        return whoami(self.ctx)

    def _history(self, limit: int) -> list[dict[str, Any]]:
        if limit <= 0:
            return []
        rows: list[StoredMessage] = []
        for chat in self.store.conversations():
            rows.extend(self.store.history(chat.peer_account_id, limit))
        rows.sort(key=lambda m: (m.sent_at, m.message_id))
        out = [
            {
                "id": m.message_id,
                "peer": m.peer_account_id,
                "peer_handle": m.peer_handle,
                "dir": m.direction,
                "from": m.sender_handle,
                "to": m.recipient_handle,
                "text": m.text,
                "sent_at": m.sent_at,
            }
            for m in rows[-limit:]
        ]
        while out and len(json.dumps(out)) > prov.MAX_BOX // 2:  # leave room for the rest
            out = out[len(out) // 4 + 1 :]
        return out

    def link(self, code: str, name: str = "") -> WhoAmI:
        """On a new home: join the account whose device shows `code`."""
        if self.store.load_account() is not None:
            raise errors.AccountExistsError()
        relay_url = self.ctx.require_relay_url()
        try:
            channel, secret = prov.parse_code(code)
        except DecodeError:
            raise errors.UsageError("not a pairing code", hint="copy the code imsg device add printed") from None
        device = DeviceKeys.generate(0, self.ctx.rng)  # its id comes from the account
        token = new_token(self.ctx)
        relay = self.ctx.connect(None)
        try:
            hello = {
                "v": 1,
                "identity_key": prov.b64(device.identity.public),
                "signing_key": prov.b64(device.signing.public),
                "token": token,
                "name": name,
                "sealed_key": prov.b64(device.sealed.public),
            }
            try:
                relay.put_box(
                    channel.hex(), prov.TO_EXISTING, prov.seal_box(secret, channel, prov.TO_EXISTING, 0, hello)
                )
            except errors.RelayRefusedError as exc:
                if exc.status == 404:
                    raise errors.LocalStateError(
                        "that pairing code is unknown or expired", hint="run imsg device add again for a new code"
                    ) from None
                raise
            deadline = time.monotonic() + 300
            box = None
            while box is None:
                if time.monotonic() > deadline:
                    raise errors.LocalStateError("the other device did not answer in time")
                try:
                    box = relay.get_box(channel.hex(), prov.TO_NEW, wait=30)
                except errors.RelayRefusedError as exc:
                    if exc.status == 404:  # closed by the other device (it refused the code) or expired
                        raise errors.LocalStateError(
                            "the other device did not accept this device: wrong code, or it expired",
                            hint="check the code, or run imsg device add again for a new one",
                        ) from None
                    raise
            try:  # tell the other device it may close the channel (closing drops its contents)
                relay.put_box(
                    channel.hex(),
                    prov.TO_EXISTING,
                    prov.seal_box(secret, channel, prov.TO_EXISTING, 1, {"v": 1, "received": True}),
                )
            except errors.ImsgError:
                pass  # it closes after a timeout anyway
        finally:
            relay.close()
        try:
            welcome = prov.open_box(secret, channel, prov.TO_NEW, 0, box)
            account_private = prov.unb64(welcome, "account_private", 32)
            account_key = AccountKey(account_private)
            account_id = prov.field(welcome, "account_id", str)
            device_id = prov.field(welcome, "device_id", int)
            blob = prov.unb64(welcome, "device_list")
            devices = verify_device_list(blob, account_key.public)
            entry = devices.device(device_id)
            if (
                account_id != account_key.account_id
                or entry is None
                or entry.identity_key != device.identity.public
                or entry.signing_key != device.signing.public
                or (entry.sealed_key and entry.sealed_key != device.sealed.public)
            ):
                raise DecodeError("the account's device list does not hold this device")
            handle = canonical_handle(prov.field(welcome, "handle", str))
            contacts = [_contact_from_link(c) for c in prov.field(welcome, "contacts", list)]
            profile_key = _optional_key(welcome, "profile_key")
            profile_settings = settings_from_link(welcome)
            profile_settings.update(self.discovery.settings_from_link(welcome.get("discovery")))
            history = prov.field(welcome, "history", list)
        except (ProtocolError, errors.UsageError) as exc:
            raise errors.SecurityError(f"pairing failed: {exc}") from None
        now = self.ctx.now_ms()
        account = LocalAccount(
            account_id=account_id,
            handle=handle,
            name=str(welcome.get("name", ""))[:200],
            account_public=account_key.public,
            account_private=account_private,
            device_id=device_id,
            identity_private=device.identity.private,
            signing_private=device.signing.private,
            device_list=blob,
            relay_url=relay_url,
            token=token,
            created_at=now,
            profile_key=profile_key,
        )
        messages = [m for m in (_message_from_link(doc, account, now) for doc in history) if m is not None]
        return self.install_account(account, contacts, messages, settings=profile_settings)


def _account_key(account: LocalAccount, hint: str) -> bytes:
    """The account key, which only some devices hold (the first, and those it gave it to)."""
    if account.account_private is None:
        raise errors.LocalStateError("this device does not hold the account key", hint=hint)
    return account.account_private


def _contact_from_link(doc: Any) -> Contact:
    if not isinstance(doc, dict):
        raise DecodeError("malformed contact")
    key = prov.unb64(doc, "account_key", 32)
    account_id = prov.field(doc, "account_id", str)
    blob = prov.unb64(doc, "device_list")
    if account_id_for(key) != account_id:
        raise DecodeError("contact key does not match its account")
    verify_device_list(blob, key)
    status = "changed" if doc.get("status") == "changed" else "ok"
    contact = Contact(
        account_id,
        canonical_handle(prov.field(doc, "handle", str)),
        key,
        blob,
        bool(doc.get("verified", False)),
        0,
        status,
        _optional_key(doc, "profile_key"),
    )
    return fields_from_link(contact, doc)


def _message_from_link(doc: Any, account: LocalAccount, now: int) -> StoredMessage | None:
    """A history row sent by our own device at link time; malformed rows are skipped."""
    try:
        direction = doc["dir"] if doc["dir"] in ("in", "out") else None
        if direction is None or len(str(doc["id"])) != 32:
            return None
        return StoredMessage(
            str(doc["id"]),
            str(doc["peer"]),
            str(doc["peer_handle"]),
            direction,
            str(doc["from"]),
            str(doc["to"]),
            str(doc["text"]),
            int(doc["sent_at"]),
            now,
            0,
        )
    except (KeyError, TypeError, ValueError):
        return None


def _optional_key(doc: dict[str, Any], name: str) -> bytes:
    """A 32-byte key field that older peers may leave out (or send empty)."""
    if not doc.get(name):
        return b""
    return prov.unb64(doc, name, 32)
