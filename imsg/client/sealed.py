"""Sealed sender for `Client`: which relay keys this home trusts, its sender certificate,
the account's unidentified-access settings at the relay, and sealing/opening envelopes.

Settings this module owns (Store.get_setting/set_setting):

    sealed.only          "on": never fall back to an identified send (the message waits)
    sealed.relay_keys    JSON list of base64 Ed25519 relay keys this home trusts
    sealed.certificate   "<base64 certificate>:<our clock when fetched, ms>"
    sealed.cert_refresh_at  our clock (ms) from which receive/watch fetch a new one
    sealed.access        hex SHA-256 of the access key last published, and the
                         allow-anyone flag ("<hex>:<0|1>"), to notice a profile-key rotation

The outbox keeps identified envelopes; a batch is sealed just before it is sent, so a 401
(no access) falls back to the very same ratchet messages sent identified — nothing is
re-encrypted and no message key is spent twice.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imsg import errors
from imsg.client.context import Context
from imsg.client.results import SealedStatus
from imsg.protocol import envelope as env
from imsg.protocol import sealed as proto
from imsg.protocol.encoding import KEY_ED25519, KEY_X25519, decode_key, encode_key
from imsg.protocol.errors import CertificateError, DecodeError
from imsg.protocol.identity import DeviceKeys, verify_device_list
from imsg.protocol.session import Address
from imsg.protocol.stores import Contact, LocalAccount, OutgoingBatch

if TYPE_CHECKING:
    from imsg.relay_client import Envelope as RelayEnvelope

REASONS = ("no_access_key", "no_sealed_key", "access_denied")

SETTING_ONLY = "sealed.only"
SETTING_RELAY_KEYS = "sealed.relay_keys"
SETTING_CERTIFICATE = "sealed.certificate"
SETTING_ACCESS = "sealed.access"
SETTING_CERT_REFRESH_AT = "sealed.cert_refresh_at"


@dataclass(frozen=True, slots=True)
class Opened:
    """A sealed envelope after its outer layer: the sender the certificate names."""

    sender: Address
    session_message: bytes
    content_ciphertext: bytes
    certified_identity: bytes


class SealedSender:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.store = ctx.store
        self.sent_sealed: set[str] = set()  # message ids this process delivered sealed
        # Why a message went identified (`send --json` "sealed_reason"): REASONS.
        self.reasons: dict[str, str] = {}

    def close(self) -> None:
        pass  # nothing held: every sealed send has a connection of its own

    # --- settings ---

    @property
    def sealed_only(self) -> bool:
        return self.store.get_setting(SETTING_ONLY) == "on"

    def set_sealed_only(self, on: bool) -> None:
        with self.store.transaction():
            self.store.set_setting(SETTING_ONLY, "on" if on else None)

    def _published(self) -> tuple[str, bool] | None:
        raw = self.store.get_setting(SETTING_ACCESS)
        if not raw or ":" not in raw:
            return None
        digest, _, anyone = raw.partition(":")
        return digest, anyone == "1"

    # --- relay keys (pinned, then followed through endorsed rotations) ---

    def trusted_relay_keys(self) -> list[bytes]:
        raw = self.store.get_setting(SETTING_RELAY_KEYS)
        return [base64.b64decode(k) for k in json.loads(raw)] if raw else []

    def _save_relay_keys(self, keys: list[bytes]) -> None:
        with self.store.transaction():
            self.store.set_setting(SETTING_RELAY_KEYS, json.dumps([base64.b64encode(k).decode() for k in keys]))

    def refresh_relay_keys(self) -> list[bytes]:
        """Fetch the relay's key chain. The first time, every key it lists is pinned (trust
        on first use, like the relay's address); afterwards only keys that a trusted key
        endorsed are added — a relay that swaps its key without an endorsement is not
        followed, and certificates under the new key are rejected."""
        try:
            chain = [(decode_key(KEY_ED25519, pub), endorsement) for pub, endorsement in self.ctx.relay().sealed_keys()]
        except DecodeError:
            raise errors.UntrustedIdentityError("relay served a malformed sealed-sender key") from None
        trusted = self.trusted_relay_keys()
        keys = [pub for pub, _ in chain] if not trusted else proto.endorsed_keys(trusted, chain)
        if keys != trusted:
            self._save_relay_keys(keys)
        return keys

    def pin_relay_keys(self) -> None:
        """At init and link: pin the relay's keys now, while the relay is the one chosen."""
        if not self.trusted_relay_keys():
            self.refresh_relay_keys()

    # --- sender certificate ---

    def certificate(self) -> bytes:
        """This device's certificate for a send: the one held, while it is usable; a new
        one only when none is (issue 12, C4: a fetch right before a sealed send would tell
        the relay when this device writes). Renewal is `refresh_certificate_if_due`'s, in
        receive and watch, on a schedule of its own."""
        account = self.ctx.account()
        usable = self._usable_certificate(account)
        return usable if usable is not None else self._fetch_certificate(account)

    def refresh_certificate_if_due(self) -> bool:
        """In receive and watch: fetch a new certificate once the held one passes its
        refresh point (a random point 1-3 sevenths into its life, drawn when it was
        fetched: 1-3 days of the relay's 7), or when none is usable. True if fetched."""
        account = self.ctx.account()
        due = self.store.get_setting(SETTING_CERT_REFRESH_AT)
        if self._usable_certificate(account) is not None and due and self.ctx.now_ms() < int(due):
            return False
        self._fetch_certificate(account)
        return True

    def _usable_certificate(self, account: LocalAccount) -> bytes | None:
        """The held certificate, if it is this device's (a restored backup brings its old
        device's settings) and within the first half of its life as our clock measures it
        from the fetch: half a life of margin, so a skewed or stepped clock never makes us
        send one the relay's clock has already expired."""
        cached = self._cached_certificate()
        if cached is None:
            return None
        cert, fetched_at = cached
        if not self._names(cert, Address(account.account_id, account.device_id), self.ctx.device(account)):
            return None
        life = proto.SenderCertificate.decode(cert).expires_at - fetched_at
        age = self.ctx.now_ms() - fetched_at
        return cert if 0 <= age < life // 2 else None

    def _fetch_certificate(self, account: LocalAccount) -> bytes:
        """A new certificate: it must verify under a trusted relay key and name exactly this
        device and identity key. Its refresh point is drawn now."""
        now = self.ctx.now_ms()
        device = self.ctx.device(account)
        me = Address(account.account_id, account.device_id)
        cert = self.ctx.relay().sender_certificate(encode_key(KEY_X25519, device.identity.public))
        try:
            parsed = proto.SenderCertificate.decode(cert)
            # Signature and key only: expiry is the relay's clock against the relay's clock
            # (recipients check it against the envelope's received_at), never ours.
            self._verify(parsed, 0)
        except (CertificateError, DecodeError) as exc:
            raise errors.SecurityError(f"the relay issued an unusable sender certificate: {exc}") from None
        if not self._names(cert, me, device):
            raise errors.SecurityError("the relay issued a sender certificate for another device")
        life = max(0, parsed.expires_at - now)
        lo, hi = life // 7, 3 * life // 7
        refresh_at = now + lo + (int.from_bytes(self.ctx.rng(8), "big") % (hi - lo + 1) if hi > lo else 0)
        with self.store.transaction():
            self.store.set_setting(SETTING_CERTIFICATE, f"{base64.b64encode(cert).decode()}:{now}")
            self.store.set_setting(SETTING_CERT_REFRESH_AT, str(refresh_at))
        return cert

    @staticmethod
    def _names(cert: bytes, me: Address, device: DeviceKeys) -> bool:
        try:
            parsed = proto.SenderCertificate.decode(cert)
        except DecodeError:
            return False
        return parsed.sender == me and parsed.identity_key == device.identity.public

    def _cached_certificate(self) -> tuple[bytes, int] | None:
        raw = self.store.get_setting(SETTING_CERTIFICATE) or ""
        encoded, _, fetched_at = raw.partition(":")
        try:
            return base64.b64decode(encoded, validate=True), int(fetched_at)
        except ValueError:
            return None

    def _verify(self, cert: proto.SenderCertificate, not_after: int) -> None:
        trusted = self.trusted_relay_keys()
        if not any(proto.relay_key_id(k) == cert.key_id for k in trusted):
            trusted = self.refresh_relay_keys()  # a rotation we may follow, or a first pin
        cert.verify(trusted, not_after)

    # --- unidentified access (the account's setting at the relay) ---

    def publish_access(self, allow_anyone: bool | None = None) -> None:
        """Give the relay the access key derived from the account's current profile key
        (and the allow-anyone flag). Call it after the profile key rotates: senders holding
        the old key then get 401 and send identified (or wait, with sealed-only)."""
        account = self.ctx.account()
        if len(account.profile_key) != 32:
            raise errors.LocalStateError("this account has no profile key")
        key = proto.access_key(account.profile_key)
        if allow_anyone is None:
            published = self._published()
            allow_anyone = published[1] if published else False
        self.ctx.relay().set_sealed_access(key, allow_anyone)
        with self.store.transaction():
            self.store.set_setting(SETTING_ACCESS, f"{hashlib.sha256(key).hexdigest()}:{int(allow_anyone)}")

    def ensure_access_published(self) -> None:
        """Publish when the profile key changed since the last publication (a rotation made
        elsewhere, e.g. `profile share off`, or a home that never published)."""
        account = self.ctx.account()
        if len(account.profile_key) != 32:
            return
        digest = hashlib.sha256(proto.access_key(account.profile_key)).hexdigest()
        published = self._published()
        if published is None or published[0] != digest:
            try:
                self.publish_access()
            except errors.RelayUnavailableError:
                pass  # the next send tries again

    def status(self) -> SealedStatus:
        remote = self.ctx.relay().sealed_access()
        published = self._published()
        cached = self._cached_certificate()
        expires = 0
        if cached is not None:
            try:
                expires = proto.SenderCertificate.decode(cached[0]).expires_at
            except DecodeError:
                expires = 0
        return SealedStatus(
            self.sealed_only,
            bool(remote.get("allow_anyone", published and published[1])),
            bool(remote.get("access_key_set", False)),
            tuple(proto.relay_key_id(k).hex() for k in self.trusted_relay_keys()),
            expires,
        )

    # --- sending ---

    def _seal(self, batch: OutgoingBatch) -> list[tuple[int, bytes]] | None:
        """The batch's identified envelopes sealed to each device, or None when some device
        of the signed list has no sealed-sender key (an older client).

        To our own account the relay wants every device addressed (it cannot know which
        device sends), so the batch gets a decoy envelope for this very device, sealed to
        its own key: padded like the others, and dropped unread when it comes back."""
        account = self.ctx.account()
        own = batch.account_id == account.account_id
        if own:
            devices = verify_device_list(account.device_list, account.account_public)
        else:
            contact = self.store.get_contact(batch.account_id)
            if contact is None:
                return None
            devices = verify_device_list(contact.device_list, contact.account_key)
        cert = self.certificate()
        envelopes = list(batch.envelopes)
        if own and envelopes and account.device_id not in {d for d, _ in envelopes}:
            envelopes.append((account.device_id, envelopes[0][1]))  # the decoy: same sizes
        out = []
        for device_id, body in sorted(envelopes):
            entry = devices.device(device_id)
            if entry is None or not entry.sealed_key:
                return None
            identified = env.Envelope.decode(body)
            out.append(
                (
                    device_id,
                    proto.seal_envelope(
                        Address(batch.account_id, device_id),
                        entry.sealed_key,
                        cert,
                        identified.session_message,
                        identified.content_ciphertext,
                    ),
                )
            )
        return out

    def deliver(self, batch: OutgoingBatch) -> bool:
        """Try to send `batch` sealed. True: the relay took it. False: send it identified
        (why: `reasons[message_id]`, one of REASONS), only when we hold no access key for
        the recipient. No silent downgrade (issue 12, row 2): a 401 although we hold their
        key raises SealedRefusedError and the batch stays queued; with sealed-only, instead
        of False, SealedOnlyError (the batch stays queued)."""
        account = self.ctx.account()
        self.ensure_access_published()
        if batch.account_id == account.account_id:
            # Copies to our own devices (and notes to self) go sealed too, with our own
            # access key (issue 12, row 1): identified, the relay's envelopes table would
            # name the sender of the sealed message they copy.
            contact: Contact | None = own_contact(account)
        else:
            contact = self.store.get_contact(batch.account_id)
        sealed = self._seal(batch) if contact is not None else None
        if contact is None or sealed is None:
            return self._refuse(batch, "no_sealed_key", "a device of the recipient has no sealed-sender key")
        key = contact_access_key(contact)
        try:
            # A fresh connection each (AnonymousRelay): sealed sends of one process are
            # not joined by a shared keep-alive connection (issue 12, row 5).
            self.ctx.anonymous().send_sealed(batch.account_id, batch.relay_id, sealed, key)
        except errors.RelayRefusedError as exc:
            if key is not None and exc.status == 401:
                # We hold their key: the relay's word alone must not make us name them.
                message = (
                    f"the relay refused the sealed send to {contact.handle} with the access key we hold; "
                    f"message {batch.message_id} is kept in the outbox, not sent identified"
                )
                self.ctx.report(batch.message_id, "sealed_refused", message)
                raise errors.SealedRefusedError(message, message_id=batch.message_id, kept="outbox") from None
            if key is None and exc.status in (401, 429):
                # Without a key a sealed send only works if they allow anyone; the refused
                # attempts have a limit of their own at the relay (429 is a refusal too).
                reason = "no_access_key" if exc.status == 401 else "access_denied"
                return self._refuse(
                    batch,
                    reason,
                    f"{contact.handle} accepts sealed messages only from people they shared their profile with",
                )
            raise  # 409 device_mismatch (refetched anonymously), 429...: as for identified sends
        if batch.account_id != account.account_id:
            # Only the recipient's batch says whether the message went sealed: our own copy
            # always does, and must not make an identified send look sealed.
            self.sent_sealed.add(batch.message_id)
        return True

    def _refuse(self, batch: OutgoingBatch, reason: str, why: str) -> bool:
        if not self.sealed_only:
            if batch.account_id != self.ctx.account().account_id:  # the recipient's, not our copy's
                self.reasons[batch.message_id] = reason
            return False
        raise errors.SealedOnlyError(
            f"not sent: {why}, and sealed-only delivery is on; message {batch.message_id} is kept in the outbox",
            message_id=batch.message_id,
            kept="outbox",
        )

    # --- receiving ---

    def open(self, account: LocalAccount, e: RelayEnvelope) -> Opened:
        """The outer layer of a sealed envelope, and its certificate checked: signed by a
        trusted relay key, unexpired when the relay received it. (The caller then checks
        the certified identity against the sender's signed device list and the session.)"""
        device = self.ctx.device(account)
        me = Address(account.account_id, account.device_id)
        unsealed = proto.open_envelope(e.body, me, device.sealed)
        cert = unsealed.certificate
        try:
            self._verify(cert, e.received_at)
        except (errors.RelayRefusedError, errors.SecurityError) as exc:  # no usable relay keys
            raise CertificateError(f"sender certificate cannot be checked: {exc}") from None
        # RelayUnavailableError passes: the envelope stays unacked and is tried again later.
        return Opened(cert.sender, unsealed.session_message, unsealed.content_ciphertext, cert.identity_key)


def own_contact(account: LocalAccount) -> Contact:
    """Our own account as a recipient (notes to self, the copies to our own devices and
    their sealed sends): our handle, our profile key, verified."""
    return Contact(
        account.account_id,
        account.handle,
        account.account_public,
        account.device_list,
        verified=True,
        profile_key=account.profile_key,
        first_seen=account.created_at,
    )


def contact_access_key(contact: Contact) -> bytes | None:
    """The recipient's unidentified-access key we hold: the one their last message gave
    (every message carries the sender's), else the one their shared profile key derives."""
    if contact.access_key:
        return contact.access_key
    return proto.access_key(contact.profile_key) if len(contact.profile_key) == 32 else None
