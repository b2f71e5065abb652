"""Receiving: fetch the mailbox, accept each envelope under the receive rules
(imsg/protocol/receive.py), store what it carries, ack it; and `watch`, the long poll.

An envelope is acked once it is stored or rejected: a tampered, replayed or forged one
can never become readable, so it is dropped and reported as a Problem rather than left to
block the mailbox. One that could not be checked for now (the relay out of reach, or a
device list it would not serve yet) stays unacked and is tried again by the next receive.
Messages stored by an earlier run but never returned (it stopped before printing) are
returned too, so no incoming event is lost.

Who wrote: a first message names its sender's handle, believed only if the private lookup
maps the handle to the sender's account; a known contact writing as another handle is
shown as that handle only if the lookup says the handle is theirs. A lookup the relay
refuses for now (429: anyone can drain our budget by writing from fresh handles) never
stops receive: the message is stored and acked, shown with a Problem `from_unchecked`, and
the check is kept pending (setting `trust.pending_from:<message id>`) and completed by a
later receive. Each receive also runs the contacts' background re-verification (Trust).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import replace

from imsg import errors
from imsg.client.attachments import stored_attachments
from imsg.client.backup import Backup
from imsg.client.context import Context
from imsg.client.delivery import Delivery
from imsg.client.discovery import Discovery
from imsg.client.prekeys import Prekeys
from imsg.client.profiles import Profiles, received_profile
from imsg.client.repair import Repair
from imsg.client.results import Message
from imsg.client.retention import Retention
from imsg.client.sealed import Opened, SealedSender
from imsg.client.trust import Trust, contact_devices, own_devices
from imsg.handles import canonical_handle
from imsg.protocol import envelope as env
from imsg.protocol import receive
from imsg.protocol.content import KIND_PROFILE, KIND_RETRY, KIND_SYNC, Content
from imsg.protocol.encoding import KEY_ED25519, decode_key
from imsg.protocol.errors import (
    DecodeError,
    DecryptionError,
    DuplicateMessageError,
    NoSessionError,
    ProtocolError,
    RemoteProtocolError,
    UnknownPreKeyError,
)
from imsg.protocol.identity import account_id_for
from imsg.protocol.sealed import is_sealed
from imsg.protocol.session import Address
from imsg.protocol.stores import Contact, LocalAccount, StoredMessage
from imsg.relay_client import Envelope as RelayEnvelope

PENDING_FROM = "trust.pending_from:"  # setting prefix (+ message id): a sender check to finish
# Fetches in one receive (each up to 100 envelopes): far above a real backlog's pages, and
# the bound on what a relay that always says "more" can make us do.
MAX_FETCHES_PER_RECEIVE = 50


class Inbox:
    def __init__(
        self,
        ctx: Context,
        trust: Trust,
        delivery: Delivery,
        sealed: SealedSender,
        discovery: Discovery,
        profiles: Profiles,
        prekeys: Prekeys,
        backup: Backup,
        retention: Retention,
        repair: Repair | None = None,
    ):
        self.ctx = ctx
        self.repair = repair
        self.store = ctx.store
        self.trust = trust
        self.delivery = delivery
        self.sealed = sealed
        self.discovery = discovery
        self.profiles = profiles
        self.prekeys = prekeys
        self.backup = backup
        self.retention = retention
        self._from_checked: dict[tuple[str, str], bool] = {}  # (account, handle) -> holds it

    def receive(self, wait: float = 0, mark: bool = True) -> list[Message]:
        """Fetch, decrypt, store and ack everything waiting; return the new messages.
        With mark=False they stay unshown until mark_shown (the caller hands each out,
        e.g. writes it to a pipe, and only then counts it as delivered)."""
        account = self.ctx.account()
        self.delivery.flush_outbox()
        relay = self.ctx.relay()
        used_prekeys = False
        seen: set[str] = set()
        # Bounded: a relay answering `"more": true` forever (with nothing, or the same
        # envelopes again) must not keep us fetching; what arrived is handed out, and
        # anything really left waits for the next receive.
        for fetches in range(MAX_FETCHES_PER_RECEIVE):
            envelopes, more = relay.fetch(wait=wait if fetches == 0 else 0)
            acks = []
            new = 0
            for e in envelopes:
                if e.message_id not in seen:
                    seen.add(e.message_id)
                    new += 1
                    used_prekeys |= self.accept(account, e)
                acks.append(e.message_id)
            if acks:
                relay.ack(acks)
            if not more or not new:
                break
        self.prekeys.after_receive(used_prekeys)  # counts checked every time (drains)
        self.complete_pending_checks()
        self.trust.recheck_due()  # the contacts' randomized re-verification (key changes)
        self._refresh_certificate_quietly()
        self.profiles.refresh_all()  # contacts who announced a new name or photo
        self._backup_quietly()
        return oldest_first(self.take_unshown(mark))

    def watch(
        self, wait: float = 30, still_unlocked: Callable[[], bool] | None = None, mark: bool = True
    ) -> Iterator[Message]:
        """Yield messages as they arrive (long poll: the relay answers as soon as one lands);
        stop once `still_unlocked` says the home was locked. With mark=False the caller
        marks each one shown (mark_shown) once handed out, before asking for the next."""
        yield from self.take_unshown(mark)
        while True:
            if still_unlocked is not None and not still_unlocked():
                from imsg.store.vault import LockedError

                raise LockedError("this home was locked (imsg lock, or the unlock period ended)")
            self.retention.apply()
            yield from self.receive(wait=self._wait_for_outbox(wait), mark=mark)

    def _wait_for_outbox(self, wait: float) -> float:
        """The long poll's wait, cut short when a waiting batch (a copy to our own devices,
        delayed on purpose) falls due before it ends: the next receive flushes it."""
        due = self.delivery.next_due()
        if due is None:
            return wait
        return max(0.0, min(wait, math.ceil((due - self.ctx.now_ms()) / 1000)))

    def take_unshown(self, mark: bool = True) -> list[Message]:
        rows = self.store.unshown()
        if rows and mark:
            with self.store.transaction():
                self.store.mark_shown([m.message_id for m in rows])
        return [Message.from_stored(m, self.store.attachments(m.message_id)) for m in rows]

    def mark_shown(self, message_id: str) -> None:
        """Count one message as handed out: later receives no longer return it."""
        with self.store.transaction():
            self.store.mark_shown([message_id])

    def _refresh_certificate_quietly(self) -> None:
        """The sender certificate, renewed here on its own schedule (never just before a
        send: imsg/client/sealed.py); a relay out of reach is tried again next time."""
        try:
            self.sealed.refresh_certificate_if_due()
        except (errors.RelayUnavailableError, errors.RelayRefusedError) as exc:
            self.ctx.report("", "certificate_refresh_failed", f"sender certificate not renewed: {exc}")

    def _backup_quietly(self) -> None:
        """The automatic daily backup (imsg/client/backup.py); a failure is reported, never raised."""
        try:
            self.backup.if_due()
        except errors.ImsgError as exc:
            self.ctx.report("", "backup_failed", f"automatic backup failed: {exc}")

    # --- one envelope ---

    def accept(self, account: LocalAccount, e: RelayEnvelope) -> bool:
        """Decrypt and store one envelope. Returns True if it started a new session (a
        prekey message): the relay's one-time keys may then be low or gone, so check them.
        (Not only when a one-time key was used: once the relay has run dry, first messages
        use no one-time key at all, and the refill must still happen.)"""
        if self.store.has_message(e.message_id):
            return False  # redelivery of a message already stored: just ack it
        repairable, peer, sender = False, None, None
        retries: list[Content] = []
        try:
            envelope: Opened | env.Envelope = (
                self.sealed.open(account, e) if is_sealed(e.body) else env.Envelope.decode(e.body)
            )
            sender = envelope.sender
            me = Address(account.account_id, account.device_id)
            if receive.is_own_decoy(sender if isinstance(envelope, Opened) else None, me):
                return False  # our own sealed send's decoy for this device: ack, drop
            own = receive.from_own_account(sender, me)
            peer = None  # the contact who wrote (None: one of our own devices)
            known = None if own else self.store.get_contact(sender.account_id)
            if own:
                devices = own_devices(account)
                if receive.needs_device_list(devices, sender):
                    devices = self.trust.refresh_own_devices()
            else:
                held = contact_devices(known) if known is not None else None
                if known is None or held is None or receive.needs_device_list(held, sender):
                    peer, devices = self.trust.fetch_contact(sender.account_id, known.handle if known else "")
                else:
                    peer, devices = known, held
            entry = receive.sender_device(devices, sender)
            certified = envelope.certified_identity if isinstance(envelope, Opened) else None
            receive.check_certified_identity(certified, entry.identity_key)
            repairable = peer is not None  # from here on a failure is the session's: ask to re-send

            def keep(plaintext: bytes) -> Contact | None:
                content = receive.open_content(plaintext, envelope.content_ciphertext)
                receive.check_content_id(content, e.message_id, own=own)
                receive.check_kind(content, own=own)
                if content.kind == KIND_RETRY:  # answered after the transaction (it sends)
                    retries.append(content)
                    return None
                if peer is None:
                    self._keep_own(account, content, sender)
                    return None
                return self._keep(peer, known is None, content, sender, e.message_id)

            kept, result = receive.accept(
                self.store,
                envelope.session_message,
                local=self.ctx.device(account),
                local_address=me,
                remote_address=sender,
                remote_identity_key=entry.identity_key,
                now=self.ctx.now_ms(),
                then=keep,
            )
            if retries and peer is not None and self.repair is not None:
                self.repair.honour(account, peer, retries[0], sender.device_id)
            if kept is not None and kept.status == "changed":
                self.ctx.report(
                    e.message_id,
                    "identity_changed",
                    f"{kept.handle} now writes from a new account key (safety number changed)",
                )
            elif kept is not None and kept.status == "replaced":
                # A key the user already replaced for this handle: never pass it off as them.
                self.ctx.report(
                    e.message_id,
                    "identity_changed",
                    f"a message as {kept.handle} from an account key you no longer trust for them (safety number changed)",
                )
            return result.new_session
        except errors.RelayRefusedError as exc:
            if exc.status != 404:
                raise  # rate-limited or the like: leave it unacked, retry later
            # The envelope names a sender account the relay does not know: forged (the
            # sender field is the sender's own claim). Left unacked it would block the mailbox.
            self.ctx.report(e.message_id, "rejected", "envelope names an unknown sender account")
        except DuplicateMessageError as exc:
            self.ctx.report(e.message_id, "duplicate", str(exc))
            if isinstance(exc, UnknownPreKeyError):
                self._ask_to_resend(account, repairable, peer, sender, e.message_id)
        except (ProtocolError, errors.SecurityError) as exc:
            self.ctx.report(e.message_id, "rejected", str(exc))
            if isinstance(exc, (DecryptionError, NoSessionError)):
                self._ask_to_resend(account, repairable, peer, sender, e.message_id)
        return False

    def _ask_to_resend(
        self, account: LocalAccount, repairable: bool, peer: Contact | None, sender: Address | None, message_id: str
    ) -> None:
        """A message from a contact's signed device did not decrypt: send that device a retry
        receipt (bounded, imsg.protocol.repair), so the session heals without our reply."""
        if repairable and peer is not None and sender is not None and self.repair is not None:
            self.repair.request(account, peer, sender, message_id)

    def _keep(
        self, contact: Contact, fresh_contact: bool, content: Content, sender: Address, message_id: str
    ) -> Contact:
        """Store a contact's message (inside receive.accept's transaction); returns the
        contact as saved with it."""
        if fresh_contact or not contact.handle:
            contact = self._check_claimed_handle(contact, content.sender_handle, message_id)
            from_handle = contact.handle or _canonical_or(content.sender_handle, "")
        else:
            from_handle = self._claimed_from(contact, content.sender_handle, message_id)
        contact = received_profile(contact, content)
        if content.access and content.access != contact.access_key:  # how to answer them sealed
            contact = replace(contact, access_key=content.access)
        self.store.save_contact(contact)
        self._store(
            content,
            StoredMessage(
                content.message_id,
                contact.account_id,
                contact.handle,
                "in",
                from_handle,
                _canonical_or(content.recipient_handle, content.recipient_handle),
                content.text,
                content.sent_at,
                self.ctx.now_ms(),
                sender.device_id,
            ),
        )
        return contact

    def _keep_own(self, account: LocalAccount, content: Content, sender: Address) -> None:
        """From another of our devices: a sync copy of a message it sent, a note to self,
        or a change of our profile key or policy (nothing to store as a message)."""
        now = self.ctx.now_ms()
        if content.kind == KIND_PROFILE:
            self.profiles.own_update(account, content)
            return
        if content.kind != KIND_SYNC:  # a note to self, written on another of our devices
            self._store(
                content,
                StoredMessage(
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
                ),
            )
            return
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
            contact, _ = self.trust.fetch_contact(content.destination, canonical_handle(content.recipient_handle))
            self.store.save_contact(contact)
        if content.profile is not None and content.profile.key != contact.shared_profile_key:
            contact = replace(contact, shared_profile_key=content.profile.key)  # what we gave them
            self.store.save_contact(contact)
        self._store(
            content,
            StoredMessage(
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
            ),
        )

    def _store(self, content: Content, message: StoredMessage) -> None:
        self.store.add_message(message)
        self.store.add_attachments(stored_attachments(content.message_id, content.attachments))

    # --- who wrote ---

    def _pend(self, message_id: str, contact: Contact, handle: str) -> None:
        """Out of lookups for now: keep the check of `handle` for a later receive."""
        self.store.set_setting(
            PENDING_FROM + message_id, json.dumps({"account_id": contact.account_id, "handle": handle})
        )
        self.ctx.report(
            message_id,
            "from_unchecked",
            f"a message claims to be from {handle}; not checked yet (the relay refused the lookup for now), "
            "so the sender is unverified until a later receive checks it",
        )

    def _check_claimed_handle(self, contact: Contact, claimed: str, message_id: str) -> Contact:
        """A first message names its sender's handle; believe it only if the private
        lookup maps that handle to the same account. Refused for now (429): the message is
        kept under a contact with no handle, and the check is completed later."""
        try:
            handle = canonical_handle(claimed)
            holder = self.discovery.holders([handle])[handle]
        except errors.UsageError:
            holder = None
        except errors.RelayRefusedError as exc:
            if exc.status == 429:
                self._pend(message_id, contact, handle)
                return contact  # no handle yet (a first contact has none): nothing pinned to it
            holder = None
        if holder is None or holder.account_id != contact.account_id:
            raise errors.UntrustedIdentityError("sender claims a handle it does not hold")
        return self._pin_checked(contact, handle, holder.verified)

    def _pin_checked(self, contact: Contact, handle: str, verified: bool) -> Contact:
        """`contact` holds `handle` (the lookup said so): its handle, "changed" if another
        identity is pinned for that handle."""
        self.discovery.note_handle_verified(handle, verified)
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
                holder = self.discovery.holders([handle])[handle] if handle else None
            except errors.RelayRefusedError as exc:
                if exc.status != 429:
                    raise
                self._pend(message_id, contact, handle)  # shown as their known handle meanwhile
                return contact.handle
            checked[key] = holder is not None and holder.account_id == contact.account_id
        if checked[key]:
            return handle
        self.ctx.report(
            message_id,
            "unverified_from",
            f"{contact.handle} wrote as {claimed!r}, a handle their account does "
            "not hold; shown as from their known handle",
        )
        return contact.handle

    def complete_pending_checks(self) -> int:
        """Finish the sender checks an earlier receive could not make (the relay refused
        the lookups for now). Returns how many were completed; the rest stay pending."""
        pending = {k: v for k, v in self.store.settings().items() if k.startswith(PENDING_FROM)}
        if not pending:
            return 0
        checks: dict[str, tuple[str, str]] = {}
        for key, raw in pending.items():
            try:
                doc = json.loads(raw)
                checks[key[len(PENDING_FROM) :]] = (str(doc["account_id"]), str(doc["handle"]))
            except (ValueError, KeyError, TypeError):
                self.store.set_setting(key, None)  # unreadable: nothing to finish
        handles = sorted({h for _, h in checks.values()})
        try:
            found = self.discovery.holders(handles)
        except (errors.RelayUnavailableError, errors.RelayRefusedError):
            return 0  # still refused: a later receive tries again
        done = 0
        for message_id, (account_id, handle) in checks.items():
            holder = found.get(handle)
            contact = self.store.get_contact(account_id)
            with self.store.transaction():
                if holder is not None and holder.account_id == account_id:
                    if contact is not None and not contact.handle:
                        self.store.save_contact(self._pin_checked(contact, handle, holder.verified))
                    self.ctx.report(message_id, "from_checked", f"checked: the message is from {handle}")
                else:
                    self.ctx.report(
                        message_id,
                        "unverified_from",
                        f"a message claimed to be from {handle}, a handle its sender's account does not hold",
                    )
                self.store.set_setting(PENDING_FROM + message_id, None)
            done += 1
        return done


def oldest_first(messages: list[Message]) -> list[Message]:
    """A batch in the order its ciphertexts authenticate (the sender's sent_at; a stable
    sort, so ties stay in the order they were stored), not the order a relay chose to serve
    it: the order `history` shows."""
    return sorted(messages, key=lambda m: m.sent_at)


def _canonical_or(handle: str, fallback: str) -> str:
    try:
        return canonical_handle(handle)
    except errors.UsageError:
        return fallback
