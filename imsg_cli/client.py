"""`Client`: protocol + store + relay client. Everything the CLI does, a script can do:

    from imsg_cli import Client
    with Client.open("~/alice", relay="http://127.0.0.1:8787") as c:
        c.send("bob@example.com", "hello")
        for m in c.receive(wait=10):
            print(m.sender, m.text)

It returns dataclasses and raises `imsg_cli.errors.ImsgError` subclasses; it never prints.
Clock and randomness are injectable (`now_ms`, `rng`) for tests.
"""

from __future__ import annotations

import base64
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from imsg_cli import errors
from imsg_cli.handles import canonical_handle
from imsg_cli.protocol import consts, envelope as env, session as sess
from imsg_cli.protocol.content import KIND_TEXT, Content
from imsg_cli.protocol.encoding import KEY_ED25519, KEY_MLKEM768, KEY_X25519, decode_key, encode_key
from imsg_cli.protocol.errors import (
    DecodeError,
    DuplicateMessageError,
    ProtocolError,
    RemoteProtocolError,
)
from imsg_cli.protocol.errors import UntrustedIdentityError as ProtocolUntrusted
from imsg_cli.protocol.identity import (
    AccountKey,
    DeviceKeys,
    DeviceList,
    account_id_for,
    fingerprint,
    safety_number,
    verify_device_list,
)
from imsg_cli.protocol.prekeys import KemPreKey, OneTimePreKey, PreKeyBundle, SignedPreKey
from imsg_cli.protocol.session import Address
from imsg_cli.protocol.stores import Contact, Conversation, LocalAccount, OutgoingBatch, Store, StoredMessage
from imsg_cli.relay_client import RelayClient, b64d, b64e

STORE_FILE = "imsg.db"


@dataclass(frozen=True, slots=True)
class WhoAmI:
    account_id: str
    handle: str
    name: str
    device_id: int
    relay: str
    fingerprint: str
    devices: int


@dataclass(frozen=True, slots=True)
class SentMessage:
    id: str
    to: str
    sent_at: int
    devices: int


@dataclass(frozen=True, slots=True)
class Message:
    """A message as a reader sees it (receive, watch, history)."""

    id: str
    sender: str  # handle
    to: str  # handle
    text: str
    sent_at: int  # ms, sender's clock
    direction: str  # "in" | "out"
    peer: str  # the other party's handle

    @classmethod
    def from_stored(cls, m: StoredMessage) -> "Message":
        return cls(m.message_id, m.sender_handle, m.recipient_handle, m.text, m.sent_at, m.direction, m.peer_handle)


@dataclass(frozen=True, slots=True)
class Problem:
    """An envelope that could not be accepted (tampered, replayed, untrusted sender).
    It is acked and dropped — it can never become readable — and reported."""

    message_id: str
    code: str
    message: str


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def default_home() -> Path:
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
        now_ms: Callable[[], int] = _now_ms,
        rng: Callable[[int], bytes] = os.urandom,
        allow_insecure: bool = False,
        relay_transport=None,
    ):
        self.store = store
        self._relay_url = relay_url
        self._now = now_ms
        self._rng = rng
        self._allow_insecure = allow_insecure
        self._transport = relay_transport
        self._relay: RelayClient | None = None
        self.problems: list[Problem] = []  # filled by receive(); read and cleared by callers

    @classmethod
    def open(cls, home: str | os.PathLike | None = None, relay: str | None = None, **kwargs) -> "Client":
        from imsg_cli.store.sqlite import SQLiteStore

        path = Path(home).expanduser() if home else default_home()
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return cls(SQLiteStore(path / STORE_FILE), relay_url=relay or os.environ.get("IMSG_RELAY"), **kwargs)

    def close(self) -> None:
        if self._relay is not None:
            self._relay.close()
        self.store.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- plumbing ---

    def _account(self) -> LocalAccount:
        account = self.store.load_account()
        if account is None:
            raise errors.NoAccountError()
        return account

    def relay(self) -> RelayClient:
        if self._relay is None:
            account = self.store.load_account()
            url = self._relay_url or (account.relay_url if account else None)
            if not url:
                raise errors.UsageError("no relay given", hint="pass --relay URL or set IMSG_RELAY")
            self._relay = RelayClient(url, account.token if account else None,
                                      allow_insecure=self._allow_insecure, transport=self._transport)
        return self._relay

    def _device(self, account: LocalAccount) -> DeviceKeys:
        return DeviceKeys(account.device_id, account.identity_private, account.signing_private)

    # --- account ---

    def init(self, handle: str, name: str = "") -> WhoAmI:
        """Create the account key, this device's keys and prekeys; register with the relay."""
        if self.store.load_account() is not None:
            raise errors.AccountExistsError()
        handle = canonical_handle(handle)
        if not self._relay_url:
            raise errors.UsageError("no relay given", hint="pass --relay URL or set IMSG_RELAY")
        now = self._now()
        account_key = AccountKey.generate(self._rng)
        device = DeviceKeys.generate(1, self._rng)
        device_list = account_key.sign_device_list(
            DeviceList(account_key.public, serial=1, signed_at=now, devices=(device.entry(now),))
        )
        token = base64.urlsafe_b64encode(self._rng(32)).rstrip(b"=").decode("ascii")
        relay = RelayClient(self._relay_url, token, allow_insecure=self._allow_insecure, transport=self._transport)
        try:
            relay.register(
                account_id=account_key.account_id, account_key=encode_key(KEY_ED25519, account_key.public),
                handle=handle, device_list=device_list, device_id=1, token=token,
            )
        except errors.RelayRefusedError as exc:
            relay.close()
            if exc.relay_code == "handle_taken":
                raise errors.RelayRefusedError(f"{handle} is already registered to another account",
                                               status=exc.status, relay_code="handle_taken") from None
            raise
        account = LocalAccount(
            account_id=account_key.account_id, handle=handle, name=name,
            account_public=account_key.public, account_private=account_key.private,
            device_id=1, identity_private=device.identity.private, signing_private=device.signing.private,
            device_list=device_list, relay_url=relay.base_url, token=token, created_at=now,
        )
        self.store.save_account(account)
        self._relay = relay
        self.maintain_prekeys(force=True)
        return self.whoami()

    def whoami(self) -> WhoAmI:
        account = self._account()
        devices = verify_device_list(account.device_list, account.account_public)
        return WhoAmI(account.account_id, account.handle, account.name, account.device_id,
                      self._relay_url or account.relay_url, fingerprint(account.account_public),
                      len(devices.devices))

    # --- prekeys ---

    def maintain_prekeys(self, *, force: bool = False) -> dict:
        """Rotate the signed prekey weekly, keep a last-resort KEM prekey, refill one-time
        prekeys when the relay holds fewer than the refill mark. Returns what was published."""
        account = self._account()
        device = self._device(account)
        now = self._now()
        payload: dict = {}
        with self.store.transaction():
            signed = self.store.signed_prekeys()
            newest = signed[-1] if signed else None
            if newest is None or now - newest.created_at > consts.SIGNED_PREKEY_ROTATE_MS:
                spk = SignedPreKey.generate(device, self.store.next_prekey_id(), now, self._rng)
                self.store.save_signed_prekey(spk)
                payload["signed_prekey"] = {"key_id": spk.key_id, "public_key": b64e(encode_key(KEY_X25519, spk.public)),
                                            "signature": b64e(spk.signature)}
                # Old signed prekeys stay for mail still in flight, then go.
                for old in signed:
                    if now - old.created_at > consts.SIGNED_PREKEY_KEEP_MS:
                        self.store.remove_signed_prekey(old.key_id)
            if force:
                kpk = KemPreKey.generate(device, self.store.next_prekey_id(), now, self._rng, last_resort=True)
                self.store.save_kem_prekey(kpk)
                payload["kem_last_resort"] = _kem_json(kpk)
        counts = self.relay().key_count() if not force else {"one_time": 0, "kem_one_time": 0}
        with self.store.transaction():
            if int(counts.get("one_time", 0)) < consts.ONE_TIME_PREKEY_REFILL_BELOW:
                keys = [OneTimePreKey.generate(self.store.next_prekey_id(), self._rng)
                        for _ in range(consts.ONE_TIME_PREKEY_BATCH)]
                for k in keys:
                    self.store.save_one_time_prekey(k)
                payload["one_time"] = [{"key_id": k.key_id, "public_key": b64e(encode_key(KEY_X25519, k.public))}
                                       for k in keys]
            if int(counts.get("kem_one_time", 0)) < consts.ONE_TIME_PREKEY_REFILL_BELOW:
                keys = [KemPreKey.generate(device, self.store.next_prekey_id(), now, self._rng, last_resort=False)
                        for _ in range(consts.ONE_TIME_PREKEY_BATCH)]
                for k in keys:
                    self.store.save_kem_prekey(k)
                payload["kem_one_time"] = [_kem_json(k) for k in keys]
        # Private halves are committed before the public halves are published, so the
        # relay can never serve a prekey we cannot use.
        if payload:
            self.relay().publish_keys(payload)
        return payload

    # --- contacts and trust ---

    def _fetch_contact(self, account_id: str, handle: str) -> tuple[Contact, DeviceList]:
        """Fetch an account's key and signed device list; check the key matches the
        account id (so the relay cannot substitute a key) and that the key signs the list."""
        remote = self.relay().get_account(account_id)
        try:
            account_key = decode_key(KEY_ED25519, remote.account_key)
        except DecodeError:
            raise errors.UntrustedIdentityError("relay served a malformed account key") from None
        if account_id_for(account_key) != account_id:
            raise errors.UntrustedIdentityError("relay served an account key that does not match the account")
        known = self.store.get_contact(account_id)
        if known is not None and known.account_key != account_key:
            raise errors.UntrustedIdentityError("account key changed")  # unreachable: ids derive from keys
        try:
            devices = verify_device_list(remote.device_list, account_key)
        except (ProtocolUntrusted, DecodeError) as exc:
            raise errors.UntrustedIdentityError(f"device list rejected: {exc}") from None
        if known is not None:
            old = verify_device_list(known.device_list, account_key)
            if devices.serial < old.serial:
                raise errors.UntrustedIdentityError("relay served an older device list than one already seen")
        contact = Contact(account_id, handle, account_key, remote.device_list,
                          verified=known.verified if known else False,
                          first_seen=known.first_seen if known else self._now())
        return contact, devices

    def _resolve(self, handle: str) -> tuple[Contact, DeviceList]:
        contact = self.store.contact_by_handle(handle)
        if contact is not None:
            return contact, verify_device_list(contact.device_list, contact.account_key)
        account_id = self.relay().lookup(handle)
        contact, devices = self._fetch_contact(account_id, handle)
        with self.store.transaction():
            self.store.save_contact(contact)
        return contact, devices

    def safety_number(self, handle: str) -> str:
        account = self._account()
        contact = self.store.contact_by_handle(canonical_handle(handle))
        if contact is None:
            raise errors.UnknownContactError(f"no contact {handle}")
        return safety_number(account.account_public, contact.account_key)

    # --- sending ---

    def send(self, to: str, text: str) -> SentMessage:
        to = canonical_handle(to)  # a usage error (2) comes before any state error (3)
        account = self._account()
        self.flush_outbox()
        contact, devices = self._resolve(to)
        now = self._now()
        message_id = secrets.token_hex(16) if self._rng is os.urandom else self._rng(16).hex()
        content = Content(message_id, now, KIND_TEXT, account.handle, to, text)
        try:
            package, content_ct = env.seal_content(content.encode(), self._rng)
        except ValueError:
            raise errors.UsageError("message too long") from None
        targets = [d for d in devices.devices
                   if not (contact.account_id == account.account_id and d.device_id == account.device_id)]
        envelopes = self._encrypt_for(account, contact.account_id, targets, package, content_ct)
        batch = OutgoingBatch(message_id, contact.account_id, tuple(envelopes), now)
        with self.store.transaction():
            if envelopes:  # none: a note to self on an account with no other device
                self.store.add_outgoing(batch)
            self.store.add_message(StoredMessage(
                message_id, contact.account_id, contact.handle, "out", account.handle, to, text, now, now,
                account.device_id,
            ))
        if envelopes:
            try:
                self._deliver(batch, package, content_ct)
            except errors.SecurityError:
                with self.store.transaction():  # never retried: it would fail the same way
                    self.store.remove_outgoing(batch.message_id, batch.account_id)
                raise
            except errors.RelayUnavailableError as exc:
                raise errors.RelayUnavailableError(
                    f"{exc}; message {message_id} is queued",
                    hint="the next imsg send or receive that reaches the relay delivers it: do not send it again",
                    message_id=message_id,
                ) from None
        return SentMessage(message_id, to, now, len(targets))

    def _encrypt_for(self, account: LocalAccount, account_id: str, targets, package: bytes,
                     content_ct: bytes) -> list[tuple[int, bytes]]:
        """Encrypt the key package to each target device, committing each advanced ratchet
        before the envelope can leave (a crash must never reuse a message key)."""
        device = self._device(account)
        me = Address(account.account_id, account.device_id)
        missing = [d for d in targets if self.store.load_session(Address(account_id, d.device_id)) is None]
        bundles = {}
        if missing:
            for raw in self.relay().fetch_bundles(account_id):
                b = _parse_bundle(raw)
                if b is not None:
                    bundles[b.device_id] = b
        out = []
        with self.store.transaction():
            for d in targets:
                address = Address(account_id, d.device_id)
                stored = self.store.load_session(address)
                record = sess.SessionRecord.decode(stored) if stored else sess.SessionRecord()
                if record.current is None or record.current.remote_identity_key != d.identity_key:
                    bundle = bundles.get(d.device_id)
                    if bundle is None:
                        bundle = _parse_bundle(self.relay().fetch_bundles(account_id, d.device_id)[0])
                    if bundle is None:
                        raise errors.RelayRefusedError(f"no prekeys for device {d.device_id}",
                                                       relay_code="no_prekeys")
                    try:
                        record.promote(sess.initiate(device, me, address, d.identity_key, d.signing_key,
                                                     bundle, self._rng))
                    except ProtocolUntrusted as exc:
                        raise errors.UntrustedIdentityError(str(exc)) from None
                    except ProtocolError as exc:
                        raise errors.SecurityError(f"session set-up failed: {exc}") from None
                session_message = record.current.encrypt(package, self._rng)
                self.store.save_session(address, record.encode())
                envelope = env.Envelope(env.KIND_IDENTIFIED, me, session_message, content_ct)
                out.append((d.device_id, envelope.encode()))
        return out

    def _deliver(self, batch: OutgoingBatch, package: bytes | None = None, content_ct: bytes | None = None) -> None:
        """Send a batch; on a device mismatch refetch the signed list, keep the envelopes of
        devices still present, encrypt for new ones, and retry once."""
        relay = self.relay()
        try:
            relay.send(batch.account_id, batch.message_id, list(batch.envelopes))
        except errors.RelayRefusedError as exc:
            if exc.relay_code != "device_mismatch":
                raise
            account = self._account()
            contact = self.store.get_contact(batch.account_id)
            contact, devices = self._fetch_contact(batch.account_id, contact.handle if contact else "")
            # The relay wants envelopes for a device the account key never signed: it (or
            # someone who controls it) added a device of its own. Never encrypt to it.
            unsigned = sorted(int(d) for d in exc.details.get("missing") or [] if devices.device(int(d)) is None)
            if unsigned:
                raise errors.UntrustedIdentityError(
                    f"the relay lists device(s) {unsigned} that the account's signed device list does not hold")
            keep = {d: e for d, e in batch.envelopes if devices.device(d) is not None}
            new = [d for d in devices.devices if d.device_id not in keep and not (
                batch.account_id == account.account_id and d.device_id == account.device_id)]
            if package is None:  # a queued batch: its content key is gone, new devices miss it
                new = []
            envelopes = sorted(list(keep.items()) + self._encrypt_for(account, batch.account_id, new, package, content_ct))
            batch = OutgoingBatch(batch.message_id, batch.account_id, tuple(envelopes), batch.created_at)
            with self.store.transaction():
                self.store.save_contact(contact)
                self.store.add_outgoing(batch)
            relay.send(batch.account_id, batch.message_id, list(batch.envelopes))
        with self.store.transaction():
            self.store.remove_outgoing(batch.message_id, batch.account_id)

    def flush_outbox(self) -> int:
        """Re-send envelopes a previous run encrypted but could not hand to the relay."""
        sent = 0
        for batch in self.store.outgoing():
            try:
                self._deliver(batch)
            except errors.RelayRefusedError as exc:
                if exc.status == 429 or exc.status == 0:
                    raise  # retry later, in order
                # Refused for good (unknown account, too large...): drop it, say so.
                with self.store.transaction():
                    self.store.remove_outgoing(batch.message_id, batch.account_id)
                self.problems.append(Problem(batch.message_id, "undeliverable", str(exc)))
                continue
            except errors.SecurityError as exc:  # e.g. the relay added an unsigned device
                with self.store.transaction():
                    self.store.remove_outgoing(batch.message_id, batch.account_id)
                self.problems.append(Problem(batch.message_id, "rejected", str(exc)))
                continue
            sent += 1
        return sent

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
        if used_prekeys or self._signed_prekey_due():
            self.maintain_prekeys()
        return self.take_unshown()

    def _signed_prekey_due(self) -> bool:
        signed = self.store.signed_prekeys()
        return not signed or self._now() - signed[-1].created_at > consts.SIGNED_PREKEY_ROTATE_MS

    def take_unshown(self) -> list[Message]:
        rows = self.store.unshown()
        if rows:
            with self.store.transaction():
                self.store.mark_shown([m.message_id for m in rows])
        return [Message.from_stored(m) for m in rows]

    def _accept(self, account: LocalAccount, e) -> bool:
        """Decrypt and store one envelope. Returns True if it started a new session (a
        prekey message): the relay's one-time keys may then be low or gone, so check them.
        (Not only when a one-time key was used: once the relay has run dry, first messages
        use no one-time key at all, and the refill must still happen.)"""
        if self.store.has_message(e.message_id):
            return False  # redelivery of a message already stored: just ack it
        try:
            envelope = env.Envelope.decode(e.body)
            sender = envelope.sender
            contact = self.store.get_contact(sender.account_id)
            fresh_contact = contact is None
            devices = None
            if contact is not None:
                devices = verify_device_list(contact.device_list, contact.account_key)
            if devices is None or devices.device(sender.device_id) is None:
                contact, devices = self._fetch_contact(sender.account_id, contact.handle if contact else "")
            entry = devices.device(sender.device_id)
            if entry is None:
                raise errors.UntrustedIdentityError("sender device is not in its account's signed device list")
            with self.store.transaction():
                stored = self.store.load_session(sender)
                result = sess.decrypt(
                    sess.SessionRecord.decode(stored) if stored else None, envelope.session_message,
                    local=self._device(account), local_address=Address(account.account_id, account.device_id),
                    remote_address=sender, remote_identity_key=entry.identity_key,
                    prekeys=self.store, now=self._now(),
                )
                content = Content.decode(env.open_content(result.plaintext, envelope.content_ciphertext))
                if content.message_id != e.message_id:
                    raise RemoteProtocolError("content id does not match the envelope's message id")
                if fresh_contact or not contact.handle:
                    contact = self._check_claimed_handle(contact, content.sender_handle)
                self.store.save_session(sender, result.record.encode())
                if result.used_one_time_prekey is not None:
                    self.store.remove_one_time_prekey(result.used_one_time_prekey)
                if result.used_kem_prekey is not None:
                    self.store.remove_kem_prekey(result.used_kem_prekey)
                self.store.save_contact(contact)
                self.store.add_message(StoredMessage(
                    content.message_id, contact.account_id, contact.handle, "in", contact.handle,
                    content.recipient_handle, content.text, content.sent_at, self._now(), sender.device_id,
                ))
            return result.new_session
        except errors.RelayRefusedError as exc:
            if exc.status != 404:
                raise  # rate-limited or the like: leave it unacked, retry later
            # The envelope names a sender account the relay does not know: forged (the
            # sender field is the sender's own claim). Left unacked it would block the mailbox.
            self.problems.append(Problem(e.message_id, "rejected", "envelope names an unknown sender account"))
        except DuplicateMessageError as exc:
            self.problems.append(Problem(e.message_id, "duplicate", str(exc)))
        except (RemoteProtocolError, errors.SecurityError) as exc:
            self.problems.append(Problem(e.message_id, "rejected", str(exc)))
        except ProtocolError as exc:
            self.problems.append(Problem(e.message_id, "rejected", str(exc)))
        return False

    def _check_claimed_handle(self, contact: Contact, claimed: str) -> Contact:
        """A first message names its sender's handle; believe it only if the relay's
        directory maps that handle to the same account."""
        try:
            handle = canonical_handle(claimed)
            holder = self.relay().lookup(handle)
        except (errors.UsageError, errors.RelayRefusedError):
            holder = None
        if holder != contact.account_id:
            raise errors.UntrustedIdentityError("sender claims a handle it does not hold")
        return Contact(contact.account_id, handle, contact.account_key, contact.device_list,
                       contact.verified, contact.first_seen)

    def watch(self, wait: float = 30) -> Iterator[Message]:
        """Yield messages as they arrive (long poll: the relay answers as soon as one lands)."""
        yield from self.take_unshown()
        while True:
            yield from self.receive(wait=wait)

    # --- local history ---

    def chats(self) -> list[Conversation]:
        self._account()
        return self.store.conversations()

    def history(self, handle: str, limit: int = 50) -> list[Message]:
        handle = canonical_handle(handle)
        self._account()
        contact = self.store.contact_by_handle(handle)
        if contact is None:
            raise errors.UnknownContactError(f"no conversation with {handle}")
        return [Message.from_stored(m) for m in self.store.history(contact.account_id, limit)]


def _kem_json(k: KemPreKey) -> dict:
    return {"key_id": k.key_id, "public_key": b64e(encode_key(KEY_MLKEM768, k.public)), "signature": b64e(k.signature)}


def _parse_bundle(raw: dict) -> PreKeyBundle | None:
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
