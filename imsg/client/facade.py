"""`Client`: everything the CLI does, a script can do.

    from imsg import Client
    with Client.open("~/alice", relay="http://127.0.0.1:8787") as c:
        c.send("bob@example.com", "hello")
        for m in c.receive(wait=10):
            print(m.sender, m.text)

It returns dataclasses (imsg/client/results.py) and raises `imsg.errors.ImsgError`
subclasses; it never prints. Clock and randomness are injectable (`now_ms`, `rng`) for
tests.

This class only builds the services and delegates to them; each public method is a line
or two. The services share one Context (imsg/client/context.py) and take the services they
build on as arguments, in this order; a module may also use helper functions of a module
above it (trust.own_devices, account.whoami...), never of one below it, and none imports
this module:

    prekeys, discovery, reachable, sealed, retention, attachments   (the context only)
    trust        discovery, reachable
    delivery     trust, sealed
    profiles     trust, delivery, sealed
    messaging    trust, delivery, profiles, reachable, attachments, sealed
    account      prekeys, sealed, reachable
    devices      trust, profiles, prekeys, sealed, reachable
    backup       devices, profiles
    inbox        trust, delivery, sealed, discovery, profiles, prekeys, backup, retention
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imsg.client.account import Account
from imsg.client.attachments import Attachments, FileProgress
from imsg.client.backup import Backup
from imsg.client.context import Clock, Context, Rng
from imsg.client.delivery import Delivery
from imsg.client.devices import Devices
from imsg.client.discovery import Discovery
from imsg.client.inbox import Inbox
from imsg.client.messaging import Messaging
from imsg.client.prekeys import Prekeys
from imsg.client.profiles import Profiles
from imsg.client.reachable import Reachable
from imsg.client.repair import Repair
from imsg.client.results import (
    BackupResult,
    BackupStatus,
    ContactInfo,
    DeviceInfo,
    Draft,
    LookupResult,
    Message,
    OwnProfile,
    Pairing,
    Problem,
    SavedPhoto,
    SentMessage,
    Verification,
    WhoAmI,
)
from imsg.client.retention import Retention
from imsg.client.sealed import SealedSender
from imsg.client.trust import Trust
from imsg.handles import canonical_handle
from imsg.protocol.content import AttachmentPointer, Content
from imsg.protocol.identity import DeviceEntry, DeviceKeys, DeviceList
from imsg.protocol.session import purge_expired_skipped_keys
from imsg.protocol.stores import Contact, Conversation, LocalAccount, OwnHandle, Store
from imsg.relay_client import RelayClient

if TYPE_CHECKING:
    import httpx

    from imsg.store.vault import KeySource


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _agent_alive(home: Path) -> bool:
    from imsg.store import vault_agent

    return vault_agent.deadline(home) is not None


def default_home() -> Path:
    """The home used without --home: $IMSG_HOME, else the platform's data directory."""
    env_home = os.environ.get("IMSG_HOME")
    if env_home:
        return Path(env_home)
    from platformdirs import user_data_dir

    return Path(user_data_dir("imsg", appauthor=False))


class Client:
    def __init__(
        self,
        store: Store,
        *,
        relay_url: str | None = None,
        now_ms: Clock = _now_ms,
        rng: Rng = os.urandom,
        allow_insecure: bool = False,
        relay_transport: httpx.BaseTransport | None = None,
        proxy: str | None = None,
        sync_delay: tuple[float, float] | None = None,
    ):
        """`sync_delay`: (A, B) seconds a copy to our own devices waits (default 2-30, or
        IMSG_SYNC_DELAY="A-B"); `proxy`: socks5://HOST:PORT for unauthenticated requests."""
        ctx = self._ctx = Context(
            store,
            relay_url=relay_url,
            now_ms=now_ms,
            rng=rng,
            allow_insecure=allow_insecure,
            transport=relay_transport,
            proxy=proxy,
            sync_delay=sync_delay,
        )
        self.store = store
        # Set when the key came from the unlock agent: `watch` stops once `imsg lock` ran.
        self.still_unlocked: Callable[[], bool] | None = None
        self._prekeys = Prekeys(ctx)
        self._reachable = Reachable(ctx)
        self._sealed = SealedSender(ctx)
        self._discovery = Discovery(ctx, self._sealed)
        self._retention = Retention(ctx)
        # Expired skipped message keys leave every stored session on each open (§5).
        purge_expired_skipped_keys(store, ctx.now_ms())
        self._attachments = Attachments(ctx)
        self._trust = Trust(ctx, self._discovery, self._reachable)
        self._delivery = Delivery(ctx, self._trust, self._sealed)
        self._profiles = Profiles(ctx, self._trust, self._delivery, self._sealed)
        self._messaging = Messaging(
            ctx, self._trust, self._delivery, self._profiles, self._reachable, self._attachments, self._sealed
        )
        self._account_service = Account(ctx, self._prekeys, self._sealed, self._reachable, self._discovery)
        self._devices = Devices(
            ctx, self._trust, self._profiles, self._prekeys, self._sealed, self._reachable, self._discovery
        )
        self._backup = Backup(ctx, self._devices, self._profiles)
        self._inbox = Inbox(
            ctx,
            self._trust,
            self._delivery,
            self._sealed,
            self._discovery,
            self._profiles,
            self._prekeys,
            self._backup,
            self._retention,
            repair=Repair(ctx, self._delivery),
        )

    @classmethod
    def open(
        cls,
        home: str | os.PathLike[str] | None = None,
        relay: str | None = None,
        *,
        keys: KeySource | None = None,
        retention: bool = True,
        **kwargs: Any,
    ) -> Client:
        """Open a home (see imsg.store.vault.open_store; `keys`: a vault.KeySource for a home
        with a passcode) and apply its retention setting (unless `retention` is False: about
        to change that setting, a longer one must not lose what it would keep)."""
        from imsg.store.vault import KeySource, open_store

        path = Path(home).expanduser() if home else default_home()
        # The SOCKS5 proxy for unauthenticated requests (socks5://HOST:PORT, e.g. Tor's).
        kwargs.setdefault("proxy", os.environ.get("IMSG_PROXY") or None)
        keys = keys if keys is not None else KeySource.from_environment(interactive=False)
        client = cls(open_store(path, keys), relay_url=relay or os.environ.get("IMSG_RELAY"), **kwargs)
        if keys.from_agent:
            client.still_unlocked = lambda: _agent_alive(path)
        try:
            if retention:
                client.apply_retention()
        except BaseException:
            client.close()
            raise
        return client

    def close(self) -> None:
        self._sealed.close()
        self._ctx.close()
        self.store.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def problems(self) -> list[Problem]:
        """What went wrong without failing the call (rejected envelopes, a failed automatic
        backup...): filled by receive() and others; read and cleared by callers."""
        return self._ctx.problems

    def relay(self) -> RelayClient:
        """The relay client, with this device's credential."""
        return self._ctx.relay()

    def sealed(self) -> SealedSender:
        """Sealed sender: settings, certificate, relay keys (imsg/client/sealed.py)."""
        return self._sealed

    def publish_sealed_access(self) -> None:
        """Tell the relay the access key of the current profile key: call after rotating it."""
        self._sealed.publish_access()

    # --- account and prekeys ---

    def init(self, handle: str, name: str = "", device_name: str = "") -> WhoAmI:
        """Create the account key, this device's keys and prekeys; register with the relay."""
        return self._account_service.init(handle, name, device_name)

    def whoami(self) -> WhoAmI:
        return self._account_service.whoami()

    def privacy_report(self) -> dict[str, Any]:
        """Everything the relay holds about this account, from its tables (GET /v1/privacy/report)."""
        return self._account_service.privacy_report()

    def maintain_prekeys(self, *, force: bool = False) -> dict[str, Any]:
        """Rotate the signed prekey weekly, keep a last-resort KEM prekey, refill one-time
        prekeys when the relay holds fewer than the refill mark. Returns what was published."""
        return self._prekeys.maintain(force=force)

    # --- sending ---

    def send(
        self,
        to: str,
        text: str = "",
        *,
        on_key_change: str = "hold",
        attachments: Iterable[str | os.PathLike[str]] = (),
        drafts: Iterable[str] = (),
        progress: FileProgress | None = None,
        share_profile: str | None = None,
        from_: str | None = None,
    ) -> SentMessage:
        """Send `text` to every device of `to`, and a copy to our own other devices.
        Our profile key goes with it as the share policy says; `share_profile` ("yes" or
        "no") answers for this person and is remembered (see `imsg.client.profiles`).

        If the relay now maps `to` to a different account key, the message is held (kept
        locally, not sent) and IdentityChangedError is raised, unless `on_key_change` is
        "accept"; `trust(to)` later releases held messages."""
        return self._messaging.send(
            to,
            text,
            on_key_change=on_key_change,
            attachments=attachments,
            drafts=drafts,
            progress=progress,
            share_profile=share_profile,
            from_=from_,
        )

    def flush_outbox(self) -> int:
        """Re-send envelopes a previous run encrypted but could not hand to the relay."""
        return self._delivery.flush_outbox()

    # --- receiving ---

    def receive(self, wait: float = 0, mark: bool = True) -> list[Message]:
        """Fetch, decrypt, store and ack everything waiting; return the new messages.
        Messages stored by an earlier run but never returned (it stopped before printing)
        are returned too, so no incoming event is lost. With mark=False nothing counts as
        handed out until mark_shown(id): a caller that writes each message to a pipe marks
        it once written, so a reader that goes away loses nothing."""
        return self._inbox.receive(wait, mark)

    def watch(self, wait: float = 30, mark: bool = True) -> Iterator[Message]:
        """Yield messages as they arrive (long poll: the relay answers as soon as one lands).
        With mark=False, mark each one shown (mark_shown) before taking the next."""
        return self._inbox.watch(wait, self.still_unlocked, mark)

    def take_unshown(self, mark: bool = True) -> list[Message]:
        return self._inbox.take_unshown(mark)

    def mark_shown(self, message_id: str) -> None:
        """Count a message returned by receive/watch(mark=False) as handed out."""
        self._inbox.mark_shown(message_id)

    # --- local history ---

    def chats(self) -> list[Conversation]:
        return self._messaging.chats()

    def history(self, handle: str, limit: int = 50) -> list[Message]:
        return self._messaging.history(handle, limit)

    def with_saved_paths(self, m: Message) -> Message:
        """`m` with its attachments' current saved paths (after save_attachments)."""
        return self._messaging.with_saved_paths(m)

    def delete_messages(self, message_ids: list[str]) -> int:
        """Delete messages from this home, with the attachment files saved for them.
        (secure_delete overwrites the rows; other devices keep their own copies.)"""
        return self._messaging.delete(message_ids)

    # --- retention ---

    def apply_retention(self) -> int:
        """Delete messages older than the retention setting (imsg.client.retention); cheap when
        none are due. Returns how many were deleted."""
        return self._retention.apply()

    def retention(self) -> str:
        return self._retention.current()

    def set_retention(self, period: str) -> int:
        """Set how long messages are kept (30d, 1y, forever) and apply it now; returns how
        many messages that deleted."""
        return self._retention.set(period)

    # --- attachments ---

    def attach(self, path: str | os.PathLike[str], *, progress: FileProgress | None = None) -> Draft:
        """Upload a file now (encrypted) and keep it as a draft to send later, as iMessage
        does while you type. The relay purges drafts never sent after 30 days."""
        return self._attachments.attach(path, progress=progress)

    def drafts(self) -> list[Draft]:
        return self._attachments.drafts()

    def save_attachments(
        self, message_id: str, out_dir: str | os.PathLike[str], *, progress: FileProgress | None = None
    ) -> list[Path]:
        """Download, check (length and digest from the encrypted message, before
        decrypting), decrypt and write each attachment of a message, 0600, under its
        sanitised name in `out_dir`. Returns the paths written."""
        return self._attachments.save(message_id, out_dir, progress=progress)

    # --- contacts, verification and trust ---

    def contacts(self) -> list[ContactInfo]:
        return self._trust.contacts()

    def verify(self, handle: str, *, mark: bool = False) -> Verification:
        """The safety number with a contact; `mark=True` records that it was compared.
        For a contact whose key changed, it is the number of the new key."""
        return self._trust.verify(handle, mark=mark)

    def trust(self, handle: str) -> list[SentMessage]:
        """Accept a contact's new identity (unverified) and send the messages held for it."""
        handle = canonical_handle(handle)
        self._trust.accept_new_identity(handle)
        return self._messaging.send_held(handle)

    # --- devices ---

    def devices(self, *, refresh: bool = True) -> list[DeviceInfo]:
        """Our account's devices, from the signed device list (refreshed from the relay)."""
        return self._devices.current(refresh=refresh)

    def device_remove(self, device_id: int) -> list[DeviceInfo]:
        """Remove a device: re-sign the list without it; the relay revokes it at once."""
        return self._devices.remove(device_id)

    def device_add_start(self) -> Pairing:
        """Open a pairing channel at the relay; show `Pairing.code` to the new device."""
        return self._devices.add_start()

    def device_add_finish(
        self, pairing: Pairing, *, timeout: float = 300, history: int = 0, name_hint: str = ""
    ) -> DeviceInfo:
        """Wait for the new device, sign it into the device list with the account key,
        register it at the relay, and send it the account, contacts and (if `history` > 0)
        that many recent messages — all end-to-end encrypted under the pairing secret."""
        return self._devices.add_finish(pairing, timeout=timeout, history=history, name_hint=name_hint)

    def device_link(self, code: str, name: str = "") -> WhoAmI:
        """On a new home: join the account whose device shows `code`."""
        return self._devices.link(code, name)

    # --- reachable at (this account's handles) and the private lookup ---

    def lookup(self, handles: list[str]) -> list[LookupResult]:
        """Whether each handle is reachable by imsg, without the relay learning which
        handles were asked about (one OPRF evaluation each, against the account's budget)."""
        return self._discovery.lookup(handles)

    def reachable_list(self, *, refresh: bool = True) -> list[OwnHandle]:
        """This account's handles as the relay holds them (refreshed into the local cache)."""
        return self._reachable.handles(refresh=refresh)

    def reachable_add(self, handle: str) -> OwnHandle:
        """Claim a handle: a verifying relay sends it a code (then `reachable_verify`); one
        that does not verify records it as claimed, unverified."""
        return self._reachable.add(handle)

    def reachable_verify(self, handle: str, code: str) -> OwnHandle:
        return self._reachable.verify(handle, code)

    def reachable_remove(self, handle: str) -> OwnHandle:
        return self._reachable.remove(handle)

    def reachable_start_from(self, handle: str) -> OwnHandle:
        return self._reachable.start_from(handle)

    def reachable_receive(self, handle: str, on: bool) -> OwnHandle:
        """Stop (or resume) receiving at a handle: off, it is not discoverable, and no new
        conversation can start at it; it stays the account's, verified."""
        return self._reachable.set_receiving(handle, on)

    # --- profiles: our name and photo, who gets them, and the address book ---

    def share_policy(self) -> str:
        return self._profiles.policy()

    def profile_revision(self) -> int:
        return self._profiles.revision()

    def set_share_policy(self, policy: str) -> str:
        """Set who gets our name and photo (contacts, ask, off). `off` also rotates the
        profile key, so people who had the old key stop seeing updates."""
        return self._profiles.set_policy(policy)

    def share_pending(self, handle: str) -> bool:
        """True if a message to `handle` now would need an answer first: the policy is
        `ask` and we never answered for them (the CLI asks, a script passes share_profile)."""
        return self._profiles.pending(handle)

    def rotate_profile_key(self) -> bytes:
        """A new profile key (and revision): the relay's copy is re-encrypted under it, and
        our other devices are told."""
        return self._profiles.rotate_key()

    def profile_set(
        self, name: str | None = None, photo: str | os.PathLike[str] | None = None, *, remove_photo: bool = False
    ) -> OwnProfile:
        """Change our name and/or photo: encrypted under our profile key, stored at the relay
        (replacing the old copy), and told to our other devices. A photo must be a JPEG,
        PNG, WebP or HEIC file of at most 512 KiB; it is never decoded."""
        return self._profiles.change(name, photo, remove_photo=remove_photo)

    def profile_show(self) -> OwnProfile:
        return self._profiles.show()

    def contact_photo(self, handle: str, out: str | os.PathLike[str]) -> SavedPhoto:
        """Write the photo `handle` shares with us to `out` (0600, never over an existing
        file), refetching it first if they announced a newer one."""
        return self._profiles.contact_photo(handle, out)

    def contacts_add(self, handle: str, nickname: str = "") -> Contact:
        """Put someone in our contacts (looked up and pinned, as a first message would), with
        an optional nickname of our own; the `contacts` policy shares with them."""
        return self._profiles.contacts_add(handle, nickname)

    def contacts_remove(self, handle: str) -> Contact:
        """Take someone out of our contacts: the `contacts` policy stops sharing with them."""
        return self._profiles.contacts_remove(handle)

    # --- backups ---

    def backup_on(self) -> str:
        """Make a recovery code, upload the first backup under it, and return the code (show
        it once: it is the only way to read the backup)."""
        return self._backup.on()

    def backup_now(self) -> BackupResult:
        return self._backup.now()

    def backup_if_due(self) -> BackupResult | None:
        """Back up if backups are on and the last one is over a day old."""
        return self._backup.if_due()

    def backup_status(self, *, relay: bool = True) -> BackupStatus:
        return self._backup.status(relay=relay)

    def backup_off(self) -> bool:
        """Delete the relay's copy at once, then forget the recovery code here. Returns
        whether the relay held a backup."""
        return self._backup.off()

    def backup_restore(self, handle: str, code: str, name: str = "") -> WhoAmI:
        """On a fresh home: restore the backup the recovery code opens, as a new device of
        the account (imsg/client/backup.py)."""
        return self._backup.restore(handle, code, name)

    # --- seams the tests use (private: not part of the API) ---

    @property
    def _now(self) -> Clock:
        return self._ctx.now_ms

    @_now.setter
    def _now(self, clock: Clock) -> None:
        self._ctx.now_ms = clock

    def _account(self) -> LocalAccount:
        return self._ctx.account()

    def _device(self, account: LocalAccount) -> DeviceKeys:
        return self._ctx.device(account)

    def _resolve(self, handle: str, on_key_change: str = "hold") -> tuple[Contact, DeviceList]:
        return self._trust.resolve(handle, on_key_change)

    def _send_to(
        self,
        account: LocalAccount,
        contact: Contact,
        devices: DeviceList,
        message_id: str,
        text: str,
        pointers: tuple[AttachmentPointer, ...] = (),
        share_profile: str | None = None,
        sender_handle: str | None = None,
    ) -> SentMessage:
        return self._messaging.send_to(
            account, contact, devices, message_id, text, pointers, share_profile, sender_handle
        )

    def _encrypt_for(
        self, account: LocalAccount, account_id: str, targets: Sequence[DeviceEntry], package: bytes, content_ct: bytes
    ) -> list[tuple[int, bytes]]:
        return self._delivery.encrypt_for(account, account_id, targets, package, content_ct)

    def _list_with_device(
        self,
        account_private: bytes,
        current: DeviceList,
        identity_key: bytes,
        signing_key: bytes,
        name: str,
        sealed_key: bytes = b"",
    ) -> tuple[int, bytes]:
        return self._devices.list_with_device(account_private, current, identity_key, signing_key, name, sealed_key)

    def _own_profile_update(self, account: LocalAccount, content: Content) -> None:
        self._profiles.own_update(account, content)
