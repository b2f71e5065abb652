"""`Client`: protocol + store + relay client. Everything the CLI does, a script can do:

    from imsg import Client
    with Client.open("~/alice", relay="http://127.0.0.1:8787") as c:
        c.send("bob@example.com", "hello")
        for m in c.receive(wait=10):
            print(m.sender, m.text)

It returns dataclasses and raises `imsg.errors.ImsgError` subclasses; it never prints.
Clock and randomness are injectable (`now_ms`, `rng`) for tests.
"""

from __future__ import annotations

import base64
import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from imsg import errors
from imsg.client import profiles
from imsg.client.attachments import Attachments
from imsg.client.backup import BackupMixin
from imsg.client.context import Context
from imsg.client.delivery import Delivery
from imsg.client.discovery import Discovery
from imsg.client.prekeys import Prekeys
from imsg.client.profiles import Profiles
from imsg.client.reachable import Reachable
from imsg.client.results import (
    AttachmentInfo,
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
from imsg.client.sealed import SealedSender, check_certified_identity
from imsg.client.trust import Trust, own_devices
from imsg.handles import canonical_handle
from imsg.protocol import consts, discovery
from imsg.protocol import envelope as env
from imsg.protocol import provisioning as prov
from imsg.protocol import session as sess
from imsg.protocol.content import KIND_PROFILE, KIND_SYNC, KIND_TEXT, Content
from imsg.protocol.encoding import KEY_ED25519, KEY_MLKEM768, decode_key, encode_key
from imsg.protocol.errors import (
    DecodeError,
    DuplicateMessageError,
    ProtocolError,
    RemoteProtocolError,
)
from imsg.protocol.identity import (
    AccountKey,
    DeviceEntry,
    DeviceKeys,
    DeviceList,
    account_id_for,
    device_fingerprint,
    fingerprint,
    open_device_name,
    seal_device_name,
    verify_device_list,
)
from imsg.protocol.prekeys import KemPreKey
from imsg.protocol.sealed import is_sealed
from imsg.protocol.session import Address
from imsg.protocol.stores import (
    Contact,
    Conversation,
    HeldMessage,
    LocalAccount,
    OutgoingBatch,
    OwnHandle,
    Store,
    StoredMessage,
)
from imsg.relay_client import RelayClient, b64e

STORE_FILE = "imsg.db"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _agent_alive(home: Path) -> bool:
    from imsg.store import vault_agent

    return vault_agent.deadline(home) is not None


def default_home() -> Path:
    env_home = os.environ.get("IMSG_HOME")
    if env_home:
        return Path(env_home)
    from platformdirs import user_data_dir

    return Path(user_data_dir("imsg", appauthor=False))


class Client(BackupMixin):
    def __init__(
        self,
        store: Store,
        *,
        relay_url: str | None = None,
        now_ms: Callable[[], int] = _now_ms,
        rng: Callable[[int], bytes] = os.urandom,
        allow_insecure: bool = False,
        relay_transport=None,
    ):
        ctx = self._ctx = Context(
            store,
            relay_url=relay_url,
            now_ms=now_ms,
            rng=rng,
            allow_insecure=allow_insecure,
            transport=relay_transport,
        )
        self.store = store
        self._prekeys = Prekeys(ctx)
        self._discovery = Discovery(ctx)
        self._reachable = Reachable(ctx)
        self._sealed = SealedSender(ctx)
        self._retention = Retention(ctx)
        self._attachments = Attachments(ctx)
        self._trust = Trust(ctx, self._discovery, self._reachable)
        self._delivery = Delivery(ctx, self._trust, self._sealed)
        self._profiles = Profiles(ctx, self._trust, self._delivery, self._sealed)
        self._from_checked: dict[tuple[str, str], bool] = {}  # (account, handle) -> holds it
        # Set when the key came from the unlock agent: `watch` stops once `imsg lock` ran.
        self.still_unlocked: Callable[[], bool] | None = None

    @classmethod
    def open(
        cls,
        home: str | os.PathLike | None = None,
        relay: str | None = None,
        *,
        keys=None,
        retention: bool = True,
        **kwargs,
    ) -> Client:
        """Open a home (see imsg.store.vault.open_store; `keys`: a vault.KeySource for a home
        with a passcode) and apply its retention setting (unless `retention` is False: about
        to change that setting, a longer one must not lose what it would keep)."""
        from imsg.store.vault import KeySource, open_store

        path = Path(home).expanduser() if home else default_home()
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

    @property
    def problems(self) -> list[Problem]:
        """Filled by receive() (and other calls that carry on past a failure); read and
        cleared by callers."""
        return self._ctx.problems

    # Transitional: the mixins still read these.
    @property
    def _now(self) -> Callable[[], int]:
        return self._ctx.now_ms

    @_now.setter
    def _now(self, clock: Callable[[], int]) -> None:
        self._ctx.now_ms = clock

    @property
    def _rng(self) -> Callable[[int], bytes]:
        return self._ctx.rng

    @property
    def _relay_url(self) -> str | None:
        return self._ctx.relay_url

    @property
    def _allow_insecure(self) -> bool:
        return self._ctx.allow_insecure

    @property
    def _transport(self):
        return self._ctx.transport

    def close(self) -> None:
        self._sealed.close()
        self._ctx.close()
        self.store.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- plumbing ---

    def _account(self) -> LocalAccount:
        return self._ctx.account()

    def relay(self) -> RelayClient:
        return self._ctx.relay()

    def _device(self, account: LocalAccount) -> DeviceKeys:
        return self._ctx.device(account)

    def sealed(self) -> SealedSender:
        """Sealed sender: settings, certificate, relay keys (imsg/client/sealed.py)."""
        return self._sealed

    def publish_sealed_access(self) -> None:
        """Tell the relay the access key of the current profile key: call after rotating it."""
        self.sealed().publish_access()

    # --- account ---

    def init(self, handle: str, name: str = "", device_name: str = "") -> WhoAmI:
        """Create the account key, this device's keys and prekeys; register with the relay."""
        if self.store.load_account() is not None:
            raise errors.AccountExistsError()
        handle = canonical_handle(handle)
        if not self._relay_url:
            raise errors.UsageError("no relay given", hint="pass --relay URL or set IMSG_RELAY")
        now = self._now()
        account_key = AccountKey.generate(self._rng)
        device = DeviceKeys.generate(1, self._rng)
        label = device_name or platform.node() or "first device"
        device_list = account_key.sign_device_list(
            DeviceList(
                account_key.public,
                serial=1,
                signed_at=now,
                devices=(device.entry(now, seal_device_name(account_key.private, 1, label, self._rng)),),
            )
        )
        token = base64.urlsafe_b64encode(self._rng(32)).rstrip(b"=").decode("ascii")
        relay = self._ctx.connect(token)
        try:
            registered = relay.register(
                account_id=account_key.account_id,
                account_key=encode_key(KEY_ED25519, account_key.public),
                handle=handle,
                device_list=device_list,
                device_id=1,
                token=token,
                label=discovery.seal_label(account_key.private, handle, self._rng, start=True),
            )
            if registered.get("handle_state") == "pending" and registered.get("code_sent") is False:
                # registered; the relay's verifier failed for now
                self.problems.append(
                    Problem(
                        "",
                        "code_not_sent",
                        f"the relay could not send a code to {handle} now; ask again with: imsg reachable add {handle}",
                    )
                )
        except errors.RelayRefusedError as exc:
            relay.close()
            if exc.relay_code == "handle_taken":
                raise errors.RelayRefusedError(
                    f"{handle} is already registered to another account", status=exc.status, relay_code="handle_taken"
                ) from None
            raise
        account = LocalAccount(
            account_id=account_key.account_id,
            handle=handle,
            name=name,
            account_public=account_key.public,
            account_private=account_key.private,
            device_id=1,
            identity_private=device.identity.private,
            signing_private=device.signing.private,
            device_list=device_list,
            relay_url=relay.base_url,
            token=token,
            created_at=now,
            profile_key=self._rng(32),
        )
        self.store.save_account(account)
        self._ctx.use_relay(relay)
        self.maintain_prekeys(force=True)
        self.sealed().pin_relay_keys()
        self.sealed().publish_access()
        self.reachable_list()  # the handle, pending under a relay that verifies
        return self.whoami()

    def whoami(self) -> WhoAmI:
        account = self._account()
        devices = verify_device_list(account.device_list, account.account_public)
        return WhoAmI(
            account.account_id,
            account.handle,
            account.name,
            account.device_id,
            self._relay_url or account.relay_url,
            fingerprint(account.account_public),
            len(devices.devices),
        )

    # --- prekeys ---

    def maintain_prekeys(self, *, force: bool = False) -> dict:
        """Rotate the signed prekey weekly, keep a last-resort KEM prekey, refill one-time
        prekeys when the relay holds fewer than the refill mark. Returns what was published."""
        return self._prekeys.maintain(force=force)

    # --- contacts and trust (transitional aliases: still called below) ---

    def _fetch_contact(self, account_id: str, handle: str) -> tuple[Contact, DeviceList]:
        return self._trust.fetch_contact(account_id, handle)

    def _resolve(self, handle: str, on_key_change: str = "hold") -> tuple[Contact, DeviceList]:
        return self._trust.resolve(handle, on_key_change)

    def _accept_identity(self, contact: Contact, previous: Contact | None) -> None:
        self._trust.accept_identity(contact, previous)

    def _own_devices(self, account: LocalAccount) -> DeviceList:
        return own_devices(account)

    def _refresh_own_devices(self) -> DeviceList:
        return self._trust.refresh_own_devices()

    # --- sending ---

    def send(
        self,
        to: str,
        text: str = "",
        *,
        on_key_change: str = "hold",
        attachments=(),
        drafts=(),
        progress: Callable[[str, int, int], None] | None = None,
        share_profile: str | None = None,
        from_: str | None = None,
    ) -> SentMessage:
        """Send `text` to every device of `to`, and a copy to our own other devices.
        Our profile key goes with it as the share policy says; `share_profile` ("yes" or
        "no") answers for this person and is remembered (see `imsg.client.profiles`).

        If the relay now maps `to` to a different account key, the message is held (kept
        locally, not sent) and IdentityChangedError is raised, unless `on_key_change` is
        "accept"; `trust(to)` later releases held messages."""
        to = canonical_handle(to)  # a usage error (2) comes before any state error (3)
        if on_key_change not in ("hold", "accept"):
            raise errors.UsageError("on_key_change must be 'hold' or 'accept'")
        account = self._account()
        if not text and not attachments and not drafts:
            raise errors.UsageError("empty message")
        sender_handle = self._sending_handle(account, from_)
        self.flush_outbox()
        pointers = self._attachments.pointers(drafts, attachments, progress)
        message_id = self._ctx.message_id()
        try:
            contact, devices = self._resolve(to, on_key_change)
        except errors.IdentityChangedError as exc:
            with self.store.transaction():
                self.store.hold_message(HeldMessage(message_id, to, text, self._now()))
            exc.details["message_id"] = message_id
            raise
        return self._send_to(account, contact, devices, message_id, text, tuple(pointers), share_profile, sender_handle)

    def _send_to(
        self,
        account: LocalAccount,
        contact: Contact,
        devices: DeviceList,
        message_id: str,
        text: str,
        pointers: tuple = (),
        share_profile: str | None = None,
        sender_handle: str | None = None,
    ) -> SentMessage:
        now = self._now()
        to = contact.handle
        sender_handle = sender_handle or self._sending_handle(account, None)
        profile, contact = self._profiles.share_for(account, contact, share_profile)
        content = Content(message_id, now, KIND_TEXT, sender_handle, to, text, attachments=pointers, profile=profile)
        try:
            package, content_ct = env.seal_content(content.encode(), self._rng)
        except ValueError:
            raise errors.UsageError("message too long") from None
        to_self = contact.account_id == account.account_id
        targets = [d for d in devices.devices if not (to_self and d.device_id == account.device_id)]
        batches = []
        if targets:  # none: a note to self on an account with no other device
            envelopes = self._encrypt_for(account, contact.account_id, targets, package, content_ct)
            batches.append((OutgoingBatch(message_id, contact.account_id, tuple(envelopes), now), package, content_ct))
        own_others = (
            [] if to_self else [d for d in self._own_devices(account).devices if d.device_id != account.device_id]
        )
        if own_others:  # sent-message sync: the same id, so every device stores it once
            sync = Content(
                message_id,
                now,
                KIND_SYNC,
                sender_handle,
                to,
                text,
                contact.account_id,
                encode_key(KEY_ED25519, contact.account_key),
                pointers,
                profile,
            )
            sync_package, sync_ct = env.seal_content(sync.encode(), self._rng)
            envelopes = self._encrypt_for(account, account.account_id, own_others, sync_package, sync_ct)
            batches.append(
                (OutgoingBatch(message_id, account.account_id, tuple(envelopes), now), sync_package, sync_ct)
            )
        with self.store.transaction():
            if not to_self:  # an answer given now, and the key given to them
                self.store.save_contact(replace(contact, shared_profile_key=profile.key) if profile else contact)
            for batch, _, _ in batches:
                self.store.add_outgoing(batch)
            self.store.add_message(
                StoredMessage(
                    message_id,
                    contact.account_id,
                    contact.handle,
                    "out",
                    sender_handle,
                    to,
                    text,
                    now,
                    now,
                    account.device_id,
                )
            )
            self.store.add_attachments(_stored_attachments(message_id, pointers))
            for p in pointers:  # sent: no longer a draft, nor a resumable upload
                self.store.remove_upload(p.blob_id)
        reached = len(targets)
        try:
            for batch, package, content_ct in batches:
                delivered = self._deliver(batch, package, content_ct)
                if batch.account_id == contact.account_id:
                    reached = delivered  # after a 409 and refetch, the devices really addressed
        except errors.SecurityError:
            with self.store.transaction():  # never retried: it would fail the same way
                for batch, _, _ in batches:
                    self.store.remove_outgoing(batch.message_id, batch.account_id)
            raise
        except errors.RelayUnavailableError as exc:
            raise errors.RelayUnavailableError(
                f"{exc}; message {message_id} is queued",
                hint="the next imsg send or receive that reaches the relay delivers it: do not send it again",
                message_id=message_id,
            ) from None
        return SentMessage(message_id, to, now, reached, message_id in self.sealed().sent_sealed)

    def _encrypt_for(
        self, account: LocalAccount, account_id: str, targets, package: bytes, content_ct: bytes
    ) -> list[tuple[int, bytes]]:
        return self._delivery.encrypt_for(account, account_id, targets, package, content_ct)

    def _deliver(self, batch: OutgoingBatch, package: bytes | None = None, content_ct: bytes | None = None) -> int:
        return self._delivery.deliver(batch, package, content_ct)

    def flush_outbox(self) -> int:
        """Re-send envelopes a previous run encrypted but could not hand to the relay."""
        return self._delivery.flush_outbox()

    # --- receiving ---

    def receive(self, wait: float = 0) -> list[Message]:
        """Fetch, decrypt, store and ack everything waiting; return the new messages.
        Messages stored by an earlier run but never returned (it stopped before printing)
        are returned too, so no incoming event is lost."""
        account = self._account()
        self.flush_outbox()
        relay = self.relay()
        used_prekeys = False
        first = True
        while True:
            envelopes, more = relay.fetch(wait=wait if first else 0)
            first = False
            acks = []
            for e in envelopes:
                used_prekeys |= self._accept(account, e)
                acks.append(e.message_id)
            if acks:
                relay.ack(acks)
            if not more:
                break
        if used_prekeys or self._prekeys.signed_prekey_due():
            self.maintain_prekeys()
        self._profiles.refresh_all()  # contacts who announced a new name or photo
        self._backup_quietly()
        return self.take_unshown()

    def _backup_quietly(self) -> None:
        """The automatic daily backup (imsg/client/backup.py); a failure is reported, never raised."""
        try:
            self.backup_if_due()
        except errors.ImsgError as exc:
            self.problems.append(Problem("", "backup_failed", f"automatic backup failed: {exc}"))

    def take_unshown(self) -> list[Message]:
        rows = self.store.unshown()
        if rows:
            with self.store.transaction():
                self.store.mark_shown([m.message_id for m in rows])
        return [self._message(m) for m in rows]

    def _message(self, m: StoredMessage) -> Message:
        return Message.from_stored(m, self.store.attachments(m.message_id))

    def with_saved_paths(self, m: Message) -> Message:
        """`m` with its attachments' current saved paths (after save_attachments)."""
        infos = tuple(AttachmentInfo.from_stored(a) for a in self.store.attachments(m.id))
        return replace(m, attachments=infos)

    def _accept(self, account: LocalAccount, e) -> bool:
        """Decrypt and store one envelope. Returns True if it started a new session (a
        prekey message): the relay's one-time keys may then be low or gone, so check them.
        (Not only when a one-time key was used: once the relay has run dry, first messages
        use no one-time key at all, and the refill must still happen.)"""
        if self.store.has_message(e.message_id):
            return False  # redelivery of a message already stored: just ack it
        try:
            envelope = self.sealed().open(account, e) if is_sealed(e.body) else env.Envelope.decode(e.body)
            sender = envelope.sender
            own = sender.account_id == account.account_id
            contact = None if own else self.store.get_contact(sender.account_id)
            fresh_contact = not own and contact is None
            if own:
                if sender.device_id == account.device_id:
                    raise RemoteProtocolError("envelope claims to come from this very device")
                devices = self._own_devices(account)
                if devices.device(sender.device_id) is None:
                    devices = self._refresh_own_devices()
            else:
                devices = None
                if contact is not None:
                    devices = verify_device_list(contact.device_list, contact.account_key)
                if devices is None or devices.device(sender.device_id) is None:
                    contact, devices = self._fetch_contact(sender.account_id, contact.handle if contact else "")
            entry = devices.device(sender.device_id)
            if entry is None:
                raise errors.UntrustedIdentityError("sender device is not in its account's signed device list")
            check_certified_identity(envelope, entry.identity_key)
            with self.store.transaction():
                stored = self.store.load_session(sender)
                result = sess.decrypt(
                    sess.SessionRecord.decode(stored) if stored else None,
                    envelope.session_message,
                    local=self._device(account),
                    local_address=Address(account.account_id, account.device_id),
                    remote_address=sender,
                    remote_identity_key=entry.identity_key,
                    prekeys=self.store,
                    now=self._now(),
                )
                content = Content.decode(env.open_content(result.plaintext, envelope.content_ciphertext))
                if content.message_id != e.message_id:
                    raise RemoteProtocolError("content id does not match the envelope's message id")
                if own:
                    message = self._from_own_device(account, content, sender)
                else:
                    if content.kind != KIND_TEXT:
                        raise RemoteProtocolError("sync messages are accepted only from our own devices")
                    if fresh_contact or not contact.handle:
                        contact = self._check_claimed_handle(contact, content.sender_handle, e.message_id)
                        from_handle = contact.handle
                    else:
                        from_handle = self._claimed_from(contact, content.sender_handle, e.message_id)
                    contact = profiles.received_profile(contact, content)
                    self.store.save_contact(contact)
                    message = StoredMessage(
                        content.message_id,
                        contact.account_id,
                        contact.handle,
                        "in",
                        from_handle,
                        _canonical_or(content.recipient_handle, content.recipient_handle),
                        content.text,
                        content.sent_at,
                        self._now(),
                        sender.device_id,
                    )
                self.store.save_session(sender, result.record.encode())
                if result.used_one_time_prekey is not None:
                    self.store.remove_one_time_prekey(result.used_one_time_prekey)
                if result.used_kem_prekey is not None:
                    self.store.remove_kem_prekey(result.used_kem_prekey)
                if message is not None:  # None: a profile update from our own device
                    self.store.add_message(message)
                    self.store.add_attachments(_stored_attachments(content.message_id, content.attachments))
            if contact is not None and contact.status == "changed":
                self.problems.append(
                    Problem(
                        e.message_id,
                        "identity_changed",
                        f"{contact.handle} now writes from a new account key (safety number changed)",
                    )
                )
            elif contact is not None and contact.status == "replaced":
                # A key the user already replaced for this handle: never pass it off as them.
                self.problems.append(
                    Problem(
                        e.message_id,
                        "identity_changed",
                        f"a message as {contact.handle} from an account key you no longer "
                        "trust for them (safety number changed)",
                    )
                )
            return result.new_session
        except errors.RelayRefusedError as exc:
            if exc.status != 404:
                raise  # rate-limited or the like: leave it unacked, retry later
            # The envelope names a sender account the relay does not know: forged (the
            # sender field is the sender's own claim). Left unacked it would block the mailbox.
            self.problems.append(Problem(e.message_id, "rejected", "envelope names an unknown sender account"))
        except DuplicateMessageError as exc:
            self.problems.append(Problem(e.message_id, "duplicate", str(exc)))
        except (ProtocolError, errors.SecurityError) as exc:
            self.problems.append(Problem(e.message_id, "rejected", str(exc)))
        return False

    def _from_own_device(self, account: LocalAccount, content: Content, sender: Address) -> StoredMessage | None:
        """A sync copy of a message another of our devices sent, a note to self, or (None)
        a change of our profile key or policy."""
        now = self._now()
        if content.kind == KIND_PROFILE:
            self._profiles.own_update(account, content)
            return None
        if content.kind != KIND_SYNC:  # a note to self, written on another of our devices
            return StoredMessage(
                content.message_id,
                account.account_id,
                account.handle,
                "out",
                account.handle,
                account.handle,
                content.text,
                content.sent_at,
                now,
                sender.device_id,
            )
        contact = self.store.get_contact(content.destination)
        if contact is None:
            # Our own device names the recipient's key; the id must derive from it, and the
            # relay must serve a device list that key signed.
            try:
                key = decode_key(KEY_ED25519, content.destination_key)
            except DecodeError:
                raise RemoteProtocolError("sync message names a malformed account key") from None
            if account_id_for(key) != content.destination:
                raise RemoteProtocolError("sync message names a key that is not the account's")
            contact, _ = self._fetch_contact(content.destination, canonical_handle(content.recipient_handle))
            self.store.save_contact(contact)
        if content.profile is not None and content.profile.key != contact.shared_profile_key:
            contact = replace(contact, shared_profile_key=content.profile.key)  # what we gave them
            self.store.save_contact(contact)
        return StoredMessage(
            content.message_id,
            contact.account_id,
            contact.handle,
            "out",
            _canonical_or(content.sender_handle, account.handle),
            contact.handle,
            content.text,
            content.sent_at,
            now,
            sender.device_id,
        )

    def _check_claimed_handle(self, contact: Contact, claimed: str, message_id: str = "") -> Contact:
        """A first message names its sender's handle; believe it only if the private
        lookup maps that handle to the same account."""
        try:
            handle = canonical_handle(claimed)
            holder = self._discovery.holders([handle])[handle]
        except errors.UsageError:
            holder = None
        except errors.RelayRefusedError as exc:
            if exc.status == 429:
                raise  # out of lookups for now: leave the envelope for a later receive
            holder = None
        if holder is None or holder.account_id != contact.account_id:
            raise errors.UntrustedIdentityError("sender claims a handle it does not hold")
        self._discovery.note_handle_verified(handle, holder.verified)
        pinned = self.store.contact_by_handle(handle)
        status = (
            "changed"
            if pinned is not None and pinned.status == "ok" and pinned.account_id != contact.account_id
            else "ok"
        )
        return replace(contact, handle=handle, status=status)

    def _claimed_from(self, contact: Contact, claimed: str, message_id: str) -> str:
        """Which of a known contact's handles wrote: the claim if the private lookup maps it
        to the contact's account (checked once per handle and run), else their pinned one."""
        try:
            handle = canonical_handle(claimed)
        except errors.UsageError:
            handle = ""
        if handle == contact.handle:
            return handle
        checked = self._from_checked
        key = (contact.account_id, handle)
        if key not in checked:
            try:
                holder = self._discovery.holders([handle])[handle] if handle else None
            except errors.RelayRefusedError as exc:
                if exc.status == 429:
                    raise  # out of lookups for now: leave the envelope for a later receive
                holder = None
            checked[key] = holder is not None and holder.account_id == contact.account_id
        if checked[key]:
            return handle
        self.problems.append(
            Problem(
                message_id,
                "unverified_from",
                f"{contact.handle} wrote as {claimed!r}, a handle their account does "
                "not hold; shown as from their known handle",
            )
        )
        return contact.handle

    def watch(self, wait: float = 30) -> Iterator[Message]:
        """Yield messages as they arrive (long poll: the relay answers as soon as one lands)."""
        yield from self.take_unshown()
        while True:
            if self.still_unlocked is not None and not self.still_unlocked():
                from imsg.store.vault import LockedError

                raise LockedError("this home was locked (imsg lock, or the unlock period ended)")
            self.apply_retention()
            yield from self.receive(wait=wait)

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

    def attach(self, path: str | os.PathLike, *, progress=None) -> Draft:
        """Upload a file now (encrypted) and keep it as a draft to send later, as iMessage
        does while you type. The relay purges drafts never sent after 30 days."""
        return self._attachments.attach(path, progress=progress)

    def drafts(self) -> list[Draft]:
        return self._attachments.drafts()

    def save_attachments(self, message_id: str, out_dir: str | os.PathLike, *, progress=None) -> list[Path]:
        """Download, check (length and digest from the encrypted message, before
        decrypting), decrypt and write each attachment of a message, 0600, under its
        sanitised name in `out_dir`. Returns the paths written."""
        return self._attachments.save(message_id, out_dir, progress=progress)

    def delete_messages(self, message_ids: list[str]) -> int:
        """Delete messages from this home, with the attachment files saved for them.
        (secure_delete overwrites the rows; other devices keep their own copies.)"""
        self._account()
        known = [m for m in message_ids if self.store.has_message(m)]
        from imsg.client.retention import remove_files

        with self.store.transaction():
            paths = self.store.delete_messages(known)
        remove_files(paths)
        self.store.checkpoint()
        return len(known)

    # --- devices ---

    def devices(self, *, refresh: bool = True) -> list[DeviceInfo]:
        """Our account's devices, from the signed device list (refreshed from the relay)."""
        account = self._account()
        devices = self._refresh_own_devices() if refresh else self._own_devices(account)
        account = self._account()
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

    def _sign_devices(self, account: LocalAccount, devices: tuple[DeviceEntry, ...], current: DeviceList) -> bytes:
        if account.account_private is None:
            raise errors.LocalStateError(
                "this device does not hold the account key", hint="add or remove devices from the first device"
            )
        key = AccountKey(account.account_private)
        return key.sign_device_list(DeviceList(account.account_public, current.serial + 1, self._now(), devices))

    def device_remove(self, device_id: int) -> list[DeviceInfo]:
        """Remove a device: re-sign the list without it; the relay revokes it at once."""
        account = self._account()
        if device_id == account.device_id:
            raise errors.UsageError("cannot remove this device from itself", hint="remove it from another device")
        current = self._refresh_own_devices()
        account = self._account()
        if current.device(device_id) is None:
            raise errors.LocalStateError(f"no device {device_id} in this account")
        blob = self._sign_devices(account, tuple(d for d in current.devices if d.device_id != device_id), current)
        self.relay().remove_device(device_id, blob)
        with self.store.transaction():
            self.store.save_account(replace(account, device_list=blob))
            self.store.delete_session(Address(account.account_id, device_id))
        return self.devices(refresh=False)

    def device_add_start(self) -> Pairing:
        """Open a pairing channel at the relay; show `Pairing.code` to the new device."""
        account = self._account()
        if account.account_private is None:
            raise errors.LocalStateError(
                "this device does not hold the account key", hint="add devices from the first device"
            )
        if len(self._refresh_own_devices().devices) >= consts.MAX_DEVICES:
            raise errors.LocalStateError(
                f"this account already has {consts.MAX_DEVICES} devices", hint="remove one first: imsg device remove ID"
            )
        channel_hex, expires_at = self.relay().open_channel()
        try:
            channel = bytes.fromhex(channel_hex)
        except ValueError:
            channel = b""
        if len(channel) != prov.CHANNEL_LEN:
            raise errors.RelayRefusedError("relay returned a malformed pairing channel", relay_code="bad_response")
        secret = self._rng(prov.SECRET_LEN)
        return Pairing(prov.make_code(channel, secret), channel, secret, expires_at)

    def device_add_finish(
        self, pairing: Pairing, *, timeout: float = 300, history: int = 0, name_hint: str = ""
    ) -> DeviceInfo:
        """Wait for the new device, sign it into the device list with the account key,
        register it at the relay, and send it the account, contacts and (if `history` > 0)
        that many recent messages — all end-to-end encrypted under the pairing secret."""
        relay = self.relay()
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
            account = self._account()
            current = self._refresh_own_devices()
            account = self._account()
            now = self._now()
            device_id, blob = self._list_with_device(
                account.account_private, current, identity_key, signing_key, name, sealed_key
            )
            relay.add_device(device_id, token, blob)
            with self.store.transaction():
                self.store.save_account(replace(account, device_list=blob))
            welcome = {
                "v": 1,
                "account_id": account.account_id,
                "handle": account.handle,
                "name": account.name,
                "account_private": prov.b64(account.account_private),
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
                        **profiles.link_fields(c),
                    }
                    for c in self.store.contacts()
                    if c.status != "replaced"
                ],
                **self._profiles.link_settings(),
                "history": self._history_for_link(history),
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

    def _list_with_device(
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
            self._now(),
            seal_device_name(account_private, device_id, name, self._rng),
            sealed_key,
        )
        key = AccountKey(account_private)
        devices = DeviceList(key.public, current.serial + 1, self._now(), current.devices + (entry,))
        return device_id, key.sign_device_list(devices)

    def _install_account(
        self, account: LocalAccount, contacts, messages, attachments=(), settings: dict[str, str] | None = None
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
        self._ctx.use_relay(None)  # the next relay() carries this device's token
        self.maintain_prekeys(force=True)
        self.sealed().pin_relay_keys()
        self.reachable_list()  # the account's handles, as every device lists them
        return self.whoami()

    def _history_for_link(self, limit: int) -> list[dict]:
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

    def device_link(self, code: str, name: str = "") -> WhoAmI:
        """On a new home: join the account whose device shows `code`."""
        if self.store.load_account() is not None:
            raise errors.AccountExistsError()
        if not self._relay_url:
            raise errors.UsageError("no relay given", hint="pass --relay URL or set IMSG_RELAY")
        try:
            channel, secret = prov.parse_code(code)
        except DecodeError:
            raise errors.UsageError("not a pairing code", hint="copy the code imsg device add printed") from None
        device = DeviceKeys.generate(0, self._rng)  # its id comes from the account
        token = base64.urlsafe_b64encode(self._rng(32)).rstrip(b"=").decode("ascii")
        relay = RelayClient(self._relay_url, None, allow_insecure=self._allow_insecure, transport=self._transport)
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
            contacts = [self._contact_from_link(c) for c in prov.field(welcome, "contacts", list)]
            profile_key = _optional_key(welcome, "profile_key")
            profile_settings = profiles.settings_from_link(welcome)
            history = prov.field(welcome, "history", list)
        except (ProtocolError, errors.UsageError) as exc:
            raise errors.SecurityError(f"pairing failed: {exc}") from None
        now = self._now()
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
            relay_url=self._relay_url,
            token=token,
            created_at=now,
            profile_key=profile_key,
        )
        messages = [m for m in (_message_from_link(doc, account, now) for doc in history) if m is not None]
        return self._install_account(account, contacts, messages, settings=profile_settings)

    @staticmethod
    def _contact_from_link(doc) -> Contact:
        if not isinstance(doc, dict):
            raise DecodeError("malformed contact")
        key = prov.unb64(doc, "account_key", 32)
        account_id = prov.field(doc, "account_id", str)
        blob = prov.unb64(doc, "device_list")
        if account_id_for(key) != account_id:
            raise DecodeError("contact key does not match its account")
        verify_device_list(blob, key)
        status = doc.get("status") if doc.get("status") in ("ok", "changed") else "ok"
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
        return profiles.fields_from_link(contact, doc)

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
        account = self._account()
        self._trust.accept_new_identity(handle)
        sent = []
        for held in self.store.held_messages(handle):
            contact, devices = self._resolve(handle)
            result = self._send_to(account, contact, devices, held.message_id, held.text)
            with self.store.transaction():
                self.store.release_held(held.message_id)
            sent.append(result)
        return sent

    # --- local history ---

    def chats(self) -> list[Conversation]:
        self._account()
        return self.store.conversations()

    def history(self, handle: str, limit: int = 50) -> list[Message]:
        handle = canonical_handle(handle)
        account = self._account()
        if handle in self._own_handle_names(account):  # notes to self
            return [self._message(m) for m in self.store.history(account.account_id, limit)]
        contact = self.store.contact_by_handle(handle)
        if contact is None:
            raise errors.UnknownContactError(f"no conversation with {handle}")
        return [self._message(m) for m in self.store.history(contact.account_id, limit)]

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

    # Transitional, for the mixins.
    def _own_handle_names(self, account: LocalAccount) -> set[str]:
        return self._reachable.own_handle_names(account)

    def _sending_handle(self, account: LocalAccount, from_: str | None) -> str:
        return self._reachable.sending_handle(account, from_)

    def _handle_verified(self, handle: str) -> bool:
        return self._discovery.handle_verified(handle)

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
        self, name: str | None = None, photo: str | os.PathLike | None = None, *, remove_photo: bool = False
    ) -> OwnProfile:
        """Change our name and/or photo: encrypted under our profile key, stored at the relay
        (replacing the old copy), and told to our other devices. A photo must be a JPEG,
        PNG, WebP or HEIC file of at most 512 KiB; it is never decoded."""
        return self._profiles.change(name, photo, remove_photo=remove_photo)

    def profile_show(self) -> OwnProfile:
        return self._profiles.show()

    def contact_photo(self, handle: str, out: str | os.PathLike) -> SavedPhoto:
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

    # Transitional, for the backup mixin; and a seam the tests use.
    def _announce_profile(self, account: LocalAccount) -> None:
        self._profiles.announce(account)

    def _own_profile_update(self, account: LocalAccount, content: Content) -> None:
        self._profiles.own_update(account, content)

    # --- privacy ---

    def privacy_report(self) -> dict:
        """Everything the relay holds about this account, from its tables (GET /v1/privacy/report)."""
        self._account()
        return self.relay().privacy_report()


def _kem_json(k: KemPreKey) -> dict:
    return {"key_id": k.key_id, "public_key": b64e(encode_key(KEY_MLKEM768, k.public)), "signature": b64e(k.signature)}


def _message_from_link(doc, account: LocalAccount, now: int) -> StoredMessage | None:
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


def _canonical_or(handle: str, fallback: str) -> str:
    try:
        return canonical_handle(handle)
    except errors.UsageError:
        return fallback


def _optional_key(doc: dict, name: str) -> bytes:
    """A 32-byte key field that older peers may leave out (or send empty)."""
    if not doc.get(name):
        return b""
    return prov.unb64(doc, name, 32)


def _stored_attachments(message_id: str, pointers) -> list:
    from imsg.protocol.stores import StoredAttachment

    return [
        StoredAttachment(message_id, i, p.blob_id, p.key, p.digest, p.size, p.name, p.content_type)
        for i, p in enumerate(pointers)
    ]
