"""Getting encrypted envelopes to the relay: fan-out encryption, the outbox, and the 409.

A message's content is encrypted once (imsg.protocol.envelope); `encrypt_for` encrypts its
key package to each target device over that device's session, starting one from the
device's prekey bundle when there is none, and commits each advanced ratchet before the
envelope can leave (a crash must never reuse a message key). Batches wait in the outbox
until the relay took them, so a relay out of reach loses nothing.

The relay answers 409 `device_mismatch` when the batch does not match the account's
devices: the signed list is refetched, envelopes of devices still present are kept, new
devices are encrypted to, and the batch is sent once more. A device the relay asks for
that the account key never signed is its own: never encrypted to (SECURITY-TESTS row 4).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from imsg import errors
from imsg.client.context import Context
from imsg.client.sealed import SealedSender, contact_access_key
from imsg.client.trust import Trust
from imsg.protocol import envelope as env
from imsg.protocol import sealed as sealed_proto
from imsg.protocol import session as sess
from imsg.protocol.encoding import KEY_MLKEM768, KEY_X25519, decode_key
from imsg.protocol.errors import DecodeError, ProtocolError
from imsg.protocol.errors import UntrustedIdentityError as ProtocolUntrusted
from imsg.protocol.identity import DeviceEntry
from imsg.protocol.prekeys import PreKeyBundle
from imsg.protocol.session import Address
from imsg.protocol.stores import LocalAccount, OutgoingBatch
from imsg.relay_client import b64d


class Delivery:
    def __init__(self, ctx: Context, trust: Trust, sealed: SealedSender):
        self.ctx = ctx
        self.store = ctx.store
        self.trust = trust
        self.sealed = sealed

    def encrypt_for(
        self,
        account: LocalAccount,
        account_id: str,
        targets: Sequence[DeviceEntry],
        package: bytes,
        content_ct: bytes,
    ) -> list[tuple[int, bytes]]:
        """Encrypt the key package to each target device, committing each advanced ratchet
        before the envelope can leave (a crash must never reuse a message key)."""
        store = self.store
        device = self.ctx.device(account)
        me = Address(account.account_id, account.device_id)
        missing = [d for d in targets if store.load_session(Address(account_id, d.device_id)) is None]
        bundles = {}
        if missing:
            for raw in self.fetch_bundles(account, account_id):
                b = parse_bundle(raw)
                bundles[b.device_id] = b
        out = []
        with store.transaction():
            for d in targets:
                address = Address(account_id, d.device_id)
                stored = store.load_session(address)
                record = sess.SessionRecord.decode(stored) if stored else sess.SessionRecord()
                session = record.current
                if session is None or session.remote_identity_key != d.identity_key:
                    bundle = bundles.get(d.device_id) or self._bundle(account, account_id, d.device_id)
                    try:
                        session = sess.initiate(
                            device, me, address, d.identity_key, d.signing_key, bundle, self.ctx.rng
                        )
                    except ProtocolUntrusted as exc:
                        raise errors.UntrustedIdentityError(str(exc)) from None
                    except ProtocolError as exc:
                        raise errors.SecurityError(f"session set-up failed: {exc}") from None
                    record.promote(session)
                session_message = session.encrypt(package, self.ctx.rng, now=self.ctx.now_ms())
                store.save_session(address, record.encode())
                envelope = env.Envelope(env.KIND_IDENTIFIED, me, session_message, content_ct)
                out.append((d.device_id, envelope.encode()))
        return out

    def access_key(self, account: LocalAccount, account_id: str) -> bytes | None:
        """The unidentified-access key of `account_id` that we hold: ours for our own
        account, else the one their last message gave (or their shared profile key derives)."""
        if account_id == account.account_id:
            return sealed_proto.access_key(account.profile_key) if len(account.profile_key) == 32 else None
        contact = self.store.get_contact(account_id)
        return contact_access_key(contact) if contact is not None else None

    def fetch_bundles(self, account: LocalAccount, account_id: str, device_id: int | None = None) -> list[Any]:
        """Prekey bundles without a credential, authorized by the access key we hold (none:
        only a recipient that allows anyone answers), on a connection of their own. Only
        when that is refused and we hold no key — so the send that follows is identified
        anyway — does a credentialed request name the recipient; never with sealed-only,
        and never for a recipient whose key we hold (the relay's 401 alone must not make
        us name them: issue 12, row 2)."""
        own = account_id == account.account_id
        if own:
            self.sealed.ensure_access_published()  # the key our own devices' bundles open with
        key = self.access_key(account, account_id)
        try:
            return self.ctx.anonymous().fetch_bundles(account_id, key, device_id)
        except errors.RelayRefusedError as exc:
            if exc.status != 401:
                raise
        if key is not None and not own:
            raise errors.SealedRefusedError(
                "the relay refused the access key we hold for this recipient's prekeys; nothing was sent",
                account_id=account_id,
            )
        if self.sealed.sealed_only:
            raise errors.SealedOnlyError(
                "not sent: they have not shared their profile with you, and sealed-only delivery is on"
            )
        return self.ctx.relay().fetch_bundles(account_id, device_id)

    def _bundle(self, account: LocalAccount, account_id: str, device_id: int) -> PreKeyBundle:
        served = self.fetch_bundles(account, account_id, device_id)
        if not served:
            raise errors.RelayRefusedError(f"no prekeys for device {device_id}", relay_code="no_prekeys")
        return parse_bundle(served[0])

    def deliver(self, batch: OutgoingBatch, package: bytes | None = None, content_ct: bytes | None = None) -> int:
        """Send a batch; on a device mismatch refetch the signed list, keep the envelopes of
        devices still present, encrypt for new ones, and retry once. Returns the number of
        devices the relay accepted envelopes for. Without `package` (a queued batch: its
        content key is gone) new devices miss the message."""
        try:
            self._send(batch)
        except errors.RelayRefusedError as exc:
            if exc.relay_code != "device_mismatch":
                raise
            account = self.ctx.account()
            contact = None
            if batch.account_id == account.account_id:
                devices = self.trust.refresh_own_devices()
            else:
                known = self.store.get_contact(batch.account_id)
                contact, devices = self.trust.fetch_contact(batch.account_id, known.handle if known else "")
            # The relay wants envelopes for a device the account key never signed: it (or
            # someone who controls it) added a device of its own. Never encrypt to it.
            unsigned = sorted(int(d) for d in exc.details.get("missing") or [] if devices.device(int(d)) is None)
            if unsigned:
                raise errors.UntrustedIdentityError(
                    f"the relay lists device(s) {unsigned} that the account's signed device list does not hold"
                ) from None
            sent_to = {d for d, _ in batch.envelopes}
            keep = {d: e for d, e in batch.envelopes if devices.device(d) is not None}
            new = [
                d
                for d in devices.devices
                if d.device_id not in keep
                and not (batch.account_id == account.account_id and d.device_id == account.device_id)
            ]
            if package is None:
                new = []  # so the empty package and ciphertext below are never used
            envelopes = sorted(
                list(keep.items()) + self.encrypt_for(account, batch.account_id, new, package or b"", content_ct or b"")
            )
            batch = replace(batch, envelopes=tuple(envelopes))
            with self.store.transaction():
                if contact is not None:
                    self.store.save_contact(contact)
                for gone in sent_to - {d.device_id for d in devices.devices}:  # removed devices
                    self.store.delete_session(Address(batch.account_id, gone))
                self.store.add_outgoing(batch)
            self._send(batch)
        with self.store.transaction():
            self.store.remove_outgoing(batch.message_id, batch.account_id)
        return len(batch.envelopes)

    def _send(self, batch: OutgoingBatch) -> None:
        """Sealed when the recipient lets us (imsg/client/sealed.py), else identified."""
        if not self.sealed.deliver(batch):
            self.ctx.relay().send(batch.account_id, batch.relay_id, list(batch.envelopes))

    def flush_outbox(self) -> int:
        """Re-send envelopes a previous run encrypted but could not hand to the relay.

        One recipient's trouble never stops the rest (issue 12, C7): a 429 or an outage
        for a batch skips that recipient's later batches (so its order is kept) and goes
        on with the others; it is retried by the next flush. Nothing per recipient is
        raised from here, so `send` and `receive` always get to do their own work."""
        sent = 0
        skipped: set[str] = set()  # recipients whose earlier batch is still waiting
        now = self.ctx.now_ms()
        for batch in self.store.outgoing():
            if batch.account_id in skipped:
                continue
            if batch.not_before > now:  # a copy to our own devices, not yet due
                skipped.add(batch.account_id)
                continue
            try:
                self.deliver(batch)
            except errors.SealedOnlyError as exc:  # kept queued until it can go sealed
                self.ctx.report(batch.message_id, "sealed_only_waiting", str(exc))
                continue
            except errors.SealedRefusedError:  # kept queued, reported where it was refused
                skipped.add(batch.account_id)
                continue
            except errors.RelayUnavailableError:
                skipped.add(batch.account_id)
                continue
            except errors.RelayRefusedError as exc:
                if exc.status == 429 or exc.status == 0:
                    skipped.add(batch.account_id)  # retried later, in order
                    continue
                # Refused for good (unknown account, too large...): drop it, say so.
                with self.store.transaction():
                    self.store.remove_outgoing(batch.message_id, batch.account_id)
                self.ctx.report(batch.message_id, "undeliverable", str(exc))
                continue
            except errors.SecurityError as exc:  # e.g. the relay added an unsigned device
                with self.store.transaction():
                    self.store.remove_outgoing(batch.message_id, batch.account_id)
                self.ctx.report(batch.message_id, "rejected", str(exc))
                continue
            sent += 1
        return sent

    def next_due(self) -> int | None:
        """When the earliest waiting batch is due (ms; None: nothing waits): `watch` wakes
        for it."""
        now = self.ctx.now_ms()
        times = [b.not_before for b in self.store.outgoing() if b.not_before > now]
        return min(times) if times else None


def parse_bundle(raw: dict[str, Any]) -> PreKeyBundle:
    """Parse one device's bundle from the relay. Malformed keys raise a security error:
    the relay is not trusted to serve well-formed keys."""
    try:
        spk, kpk, otk = raw["signed_prekey"], raw["kem_prekey"], raw.get("one_time")
        return PreKeyBundle(
            device_id=int(raw["device_id"]),
            signed_prekey_id=int(spk["key_id"]),
            signed_prekey=decode_key(KEY_X25519, b64d(spk["public_key"])),
            signed_prekey_signature=b64d(spk["signature"]),
            kem_prekey_id=int(kpk["key_id"]),
            kem_prekey=decode_key(KEY_MLKEM768, b64d(kpk["public_key"])),
            kem_prekey_signature=b64d(kpk["signature"]),
            kem_last_resort=bool(kpk.get("last_resort", False)),
            one_time_prekey_id=int(otk["key_id"]) if otk else None,
            one_time_prekey=decode_key(KEY_X25519, b64d(otk["public_key"])) if otk else None,
        )
    except (KeyError, TypeError, ValueError, DecodeError, errors.RelayRefusedError):
        raise errors.UntrustedIdentityError("relay served a malformed prekey bundle") from None
