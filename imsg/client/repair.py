"""Session repair with retry receipts (docs/PROTOCOL.md §5b).

When a message from a contact's device does not decrypt here (the relay swapped a prekey,
or our session state is gone), every later message from that device would be lost until
we happened to reply. Instead we send that device, end to end, a retry receipt naming the
message; the device re-establishes its session with ours from a fresh bundle and re-sends
that message (same id, so our other devices, which had it, drop the copy). The bounds are
in imsg.protocol.repair; this service does the I/O.
"""

from __future__ import annotations

from imsg import errors
from imsg.client.context import Context
from imsg.client.delivery import Delivery
from imsg.client.trust import contact_devices
from imsg.protocol import envelope as env
from imsg.protocol import repair
from imsg.protocol import session as sess
from imsg.protocol.consts import MAX_PREVIOUS_SESSIONS
from imsg.protocol.content import KIND_RETRY, KIND_TEXT, AttachmentPointer, Content
from imsg.protocol.errors import ProtocolError
from imsg.protocol.session import Address
from imsg.protocol.stores import Contact, LocalAccount, OutgoingBatch, StoredAttachment

SETTING_RECEIPTS = "repair_receipts_sent"
SETTING_RESENDS = "repair_resends"
HISTORY_LOOKBACK = 2000  # messages of the conversation searched for the one asked for


class Repair:
    def __init__(self, ctx: Context, delivery: Delivery):
        self.ctx = ctx
        self.store = ctx.store
        self.delivery = delivery

    # --- the receiver of a message that did not decrypt ---

    def request(self, account: LocalAccount, contact: Contact, sender: Address, message_id: str) -> bool:
        """Send `sender` a retry receipt for `message_id` if the bounds allow; True if sent.
        Never raises: a receipt is a courtesy, and the failure is reported anyway."""
        now = self.ctx.now_ms()
        with self.store.transaction():
            log = repair.RepairLog.decode(self.store.get_setting(SETTING_RECEIPTS))
            if not log.may_send_receipt(str(sender), message_id, now):
                return False
            self.store.set_setting(SETTING_RECEIPTS, log.encode())
        receipt = Content(
            self.ctx.message_id(),
            now,
            KIND_RETRY,
            account.handle,
            contact.handle,
            retry_id=message_id,
            retry_device=sender.device_id,
        )
        try:
            self._send(account, contact, receipt)
        except (errors.ImsgError, ProtocolError) as exc:
            self.ctx.report(message_id, "repair_failed", f"could not ask the sender to re-send: {exc}")
            return False
        return True

    # --- the sender, asked to re-send ---

    def honour(self, account: LocalAccount, contact: Contact, receipt: Content, from_device: int) -> bool:
        """Re-establish our session with the requesting device and re-send the message the
        receipt names, if it is ours to re-send; True if re-sent. Run outside any
        transaction (it fetches a bundle and sends)."""
        if receipt.retry_device != account.device_id:
            return False  # another of our devices sent it: it got the receipt too
        now = self.ctx.now_ms()
        wanted = next(
            (m for m in self.store.history(contact.account_id, HISTORY_LOOKBACK) if m.message_id == receipt.retry_id),
            None,
        )
        if wanted is None or not repair.may_honour(
            wanted.direction, wanted.peer_account_id, wanted.sent_at, contact.account_id, now
        ):
            self.ctx.report(receipt.retry_id, "repair_refused", "a retry receipt names no message we sent them")
            return False
        requester = Address(contact.account_id, from_device)
        with self.store.transaction():
            log = repair.RepairLog.decode(self.store.get_setting(SETTING_RESENDS))
            last = repair.last_repair(log, str(requester))
            if not log.may_resend(str(requester), wanted.message_id, now):
                return False
            self.store.set_setting(SETTING_RESENDS, log.encode())
            # The session that device could not follow: demoted, not deleted (its receiving
            # side still decrypts what the device sends us), so the send below starts anew.
            # Not again for a message older than the last repair: that one used the session
            # the repair replaced, and the new one is fine.
            raw = self.store.load_session(requester)
            if raw is not None and (last is None or last < wanted.sent_at):
                record = sess.SessionRecord.decode(raw)
                if record.current is not None:
                    record.previous = [record.current, *record.previous][:MAX_PREVIOUS_SESSIONS]
                    record.current = None
                    self.store.save_session(requester, record.encode())
        original = Content(
            wanted.message_id,
            wanted.sent_at,
            KIND_TEXT,
            wanted.sender_handle,
            wanted.recipient_handle,
            wanted.text,
            attachments=tuple(_pointer(a) for a in self.store.attachments(wanted.message_id)),
        )
        try:
            self._send(account, contact, original)
        except (errors.ImsgError, ProtocolError) as exc:
            self.ctx.report(wanted.message_id, "repair_failed", f"could not re-send: {exc}")
            return False
        return True

    def _send(self, account: LocalAccount, contact: Contact, content: Content) -> None:
        package, content_ct = env.seal_content(content.encode(), self.ctx.rng)
        targets = list(contact_devices(contact).devices)
        envelopes = self.delivery.encrypt_for(account, contact.account_id, targets, package, content_ct)
        batch = OutgoingBatch(content.message_id, contact.account_id, tuple(envelopes), self.ctx.now_ms())
        with self.store.transaction():
            self.store.add_outgoing(batch)
        self.delivery.deliver(batch, package, content_ct)


def _pointer(a: StoredAttachment) -> AttachmentPointer:
    return AttachmentPointer(a.blob_id, a.key, a.digest, a.size, a.name, a.content_type)
