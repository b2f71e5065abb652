"""Sending messages, and the local history (chats, history, delete).

A message goes to every device of its recipient and, as a sync copy with the same id, to
our own other devices, so every device stores it once (DESIGN §3 fan-out). The content is
encrypted once; the batches are stored in the outbox and the message in the history in one
transaction before anything leaves, then delivered (imsg/client/delivery.py). Receiving is
imsg/client/inbox.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import replace

from imsg import errors
from imsg.client.attachments import Attachments, FileProgress, stored_attachments
from imsg.client.context import Context
from imsg.client.delivery import Delivery
from imsg.client.profiles import Profiles
from imsg.client.reachable import Reachable
from imsg.client.results import AttachmentInfo, Message, SentMessage
from imsg.client.retention import remove_files
from imsg.client.sealed import SealedSender
from imsg.client.trust import KEY_CHANGE_POLICIES, Trust, own_devices
from imsg.handles import canonical_handle
from imsg.protocol import envelope as env
from imsg.protocol import sealed as sealed_proto
from imsg.protocol.content import KIND_SYNC, KIND_TEXT, AttachmentPointer, Content
from imsg.protocol.encoding import KEY_ED25519, encode_key
from imsg.protocol.identity import DeviceList
from imsg.protocol.stores import Contact, Conversation, HeldMessage, LocalAccount, OutgoingBatch, StoredMessage


class Messaging:
    def __init__(
        self,
        ctx: Context,
        trust: Trust,
        delivery: Delivery,
        profiles: Profiles,
        reachable: Reachable,
        attachments: Attachments,
        sealed: SealedSender,
    ):
        self.ctx = ctx
        self.store = ctx.store
        self.trust = trust
        self.delivery = delivery
        self.profiles = profiles
        self.reachable = reachable
        self.attachments = attachments
        self.sealed = sealed

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
        """See Client.send."""
        to = canonical_handle(to)  # a usage error (2) comes before any state error (3)
        if on_key_change not in KEY_CHANGE_POLICIES:
            raise errors.UsageError("on_key_change must be 'hold' or 'accept'")
        account = self.ctx.account()
        if not text and not attachments and not drafts:
            raise errors.UsageError("empty message")
        sender_handle = self.reachable.sending_handle(account, from_)
        self.delivery.flush_outbox()
        pointers = self.attachments.pointers(drafts, attachments, progress)
        message_id = self.ctx.message_id()
        try:
            contact, devices = self.trust.resolve(to, on_key_change)
        except errors.IdentityChangedError as exc:
            with self.store.transaction():
                self.store.hold_message(HeldMessage(message_id, to, text, self.ctx.now_ms()))
            exc.details["message_id"] = message_id
            raise
        return self.send_to(account, contact, devices, message_id, text, tuple(pointers), share_profile, sender_handle)

    def send_to(
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
        """Encrypt, store and deliver one message to `contact`'s `devices` (and the sync
        copy to our other devices)."""
        ctx, store = self.ctx, self.store
        now = ctx.now_ms()
        to = contact.handle
        sender_handle = sender_handle or self.reachable.sending_handle(account, None)
        profile, contact = self.profiles.share_for(account, contact, share_profile)
        # Our access key goes with every message to someone else (not our name or photo:
        # those follow the share policy), so they can answer sealed (issue 12).
        access = sealed_proto.access_key(account.profile_key) if len(account.profile_key) == 32 else b""
        content = Content(
            message_id,
            now,
            KIND_TEXT,
            sender_handle,
            to,
            text,
            attachments=pointers,
            profile=profile,
            access=b"" if contact.account_id == account.account_id else access,
        )
        try:
            package, content_ct = env.seal_content(content.encode(), ctx.rng)
        except ValueError:
            raise errors.UsageError("message too long") from None
        to_self = contact.account_id == account.account_id
        targets = [d for d in devices.devices if not (to_self and d.device_id == account.device_id)]
        batches = []
        if targets:  # none: a note to self on an account with no other device
            envelopes = self.delivery.encrypt_for(account, contact.account_id, targets, package, content_ct)
            batches.append((OutgoingBatch(message_id, contact.account_id, tuple(envelopes), now), package, content_ct))
        own_others = [] if to_self else [d for d in own_devices(account).devices if d.device_id != account.device_id]
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
            sync_package, sync_ct = env.seal_content(sync.encode(), ctx.rng)
            envelopes = self.delivery.encrypt_for(account, account.account_id, own_others, sync_package, sync_ct)
            # Sealed like any send, under a fresh random id (the true one is inside the
            # content) and after a random delay, so the relay can link it neither by id
            # nor by timing to the message it copies (issue 12, row 1).
            sync_batch = OutgoingBatch(
                message_id,
                account.account_id,
                tuple(envelopes),
                now,
                envelope_id=ctx.message_id(),
                not_before=ctx.sync_not_before(now),
            )
            batches.append((sync_batch, sync_package, sync_ct))
        with store.transaction():
            if not to_self:  # an answer given now, and the key given to them
                store.save_contact(replace(contact, shared_profile_key=profile.key) if profile else contact)
            for batch, _, _ in batches:
                store.add_outgoing(batch)
            store.add_message(
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
            store.add_attachments(stored_attachments(message_id, pointers))
            for p in pointers:  # sent: no longer a draft, nor a resumable upload
                store.remove_upload(p.blob_id)
        reached = len(targets)
        refused: errors.SealedRefusedError | None = None
        try:
            for batch, package, content_ct in batches:
                if batch.not_before > ctx.now_ms():
                    continue  # waits in the outbox: the next flush (send, receive, watch) sends it
                try:
                    delivered = self.delivery.deliver(batch, package, content_ct)
                except errors.SealedRefusedError as exc:
                    # Kept queued (and reported); our own devices still get their copy. A
                    # refused copy to our own devices does not fail the send itself.
                    if batch.account_id == contact.account_id:
                        refused = exc
                    continue
                if batch.account_id == contact.account_id:
                    reached = delivered  # after a 409 and refetch, the devices really addressed
        except errors.SecurityError:
            with store.transaction():  # never retried: it would fail the same way
                for batch, _, _ in batches:
                    store.remove_outgoing(batch.message_id, batch.account_id)
            raise
        except errors.RelayUnavailableError as exc:
            raise errors.RelayUnavailableError(
                f"{exc}; message {message_id} is queued",
                hint="the next imsg send or receive that reaches the relay delivers it: do not send it again",
                message_id=message_id,
            ) from None
        if refused is not None:
            raise refused
        sealed = message_id in self.sealed.sent_sealed
        reason = "" if sealed or to_self else self.sealed.reasons.get(message_id, "")
        return SentMessage(message_id, to, now, reached, sealed, reason)

    def send_held(self, handle: str) -> list[SentMessage]:
        """Send the messages held for `handle` while its identity changed (after `trust`)."""
        account = self.ctx.account()
        sent = []
        for held in self.store.held_messages(handle):
            contact, devices = self.trust.resolve(handle)
            result = self.send_to(account, contact, devices, held.message_id, held.text)
            with self.store.transaction():
                self.store.release_held(held.message_id)
            sent.append(result)
        return sent

    # --- local history ---

    def chats(self) -> list[Conversation]:
        self.ctx.account()
        return self.store.conversations()

    def history(self, handle: str, limit: int = 50) -> list[Message]:
        handle = canonical_handle(handle)
        account = self.ctx.account()
        if handle in self.reachable.own_handle_names(account):  # notes to self
            peer = account.account_id
        else:
            contact = self.store.contact_by_handle(handle)
            if contact is None:
                raise errors.UnknownContactError(f"no conversation with {handle}")
            peer = contact.account_id
        return [Message.from_stored(m, self.store.attachments(m.message_id)) for m in self.store.history(peer, limit)]

    def with_saved_paths(self, m: Message) -> Message:
        """`m` with its attachments' current saved paths (after save_attachments)."""
        return replace(m, attachments=tuple(AttachmentInfo.from_stored(a) for a in self.store.attachments(m.id)))

    def delete(self, message_ids: list[str]) -> int:
        """Delete messages from this home, with the attachment files saved for them.
        (secure_delete overwrites the rows; other devices keep their own copies.)"""
        self.ctx.account()
        known = [m for m in message_ids if self.store.has_message(m)]
        with self.store.transaction():
            paths = self.store.delete_messages(known)
        remove_files(paths)
        self.store.checkpoint()
        return len(known)
