"""Name and photo sharing, and the address book, as `Client` methods (a mixin: the
`Client` class inherits them, so scripts call `client.contacts_add(...)` as any other).

Who gets our profile key (`_profile_for`), with the policy in the setting `profile.share`:

- `contacts` (the default): the people in our address book (`contacts add`), unless we
  answered "no" for them; anyone we answered "yes" for.
- `ask`: only people we answered "yes" for; the CLI asks before a first message to someone
  not yet answered, `--share-profile yes|no` answers for scripts, and with neither the
  message goes without it (nothing is remembered, so the CLI asks next time).
- `off`: nobody. Turning it off rotates the key: whoever held the old one can no longer
  read the profile the relay now holds.

The key travels inside the end-to-end content of every message to someone we share with
(so a changed name reaches them with the next message), and in the sync copy to our own
devices, which then know what was shared with whom. A change of our own key, revision or
policy goes to our other devices in a `profile` content message.
"""

from __future__ import annotations

import base64
import os
import secrets
from dataclasses import replace

from imsg_cli import errors
from imsg_cli.handles import canonical_handle
from imsg_cli.protocol import envelope as env
from imsg_cli.protocol.content import KIND_PROFILE, SHARE_POLICIES, Content, ProfileShare
from imsg_cli.protocol.stores import Contact, LocalAccount, OutgoingBatch

SETTING_SHARE = "profile.share"
SETTING_REVISION = "profile.revision"
DEFAULT_SHARE = "contacts"
SHARE_ANSWERS = ("yes", "no")
MAX_NICKNAME_LEN = 64


class ProfileMixin:
    """Profile sharing and the address book; mixed into `imsg_cli.client.Client`."""

    # --- policy ---

    def share_policy(self) -> str:
        value = self.store.get_setting(SETTING_SHARE)
        return value if value in SHARE_POLICIES else DEFAULT_SHARE

    def profile_revision(self) -> int:
        try:
            return int(self.store.get_setting(SETTING_REVISION) or 0)
        except ValueError:
            return 0

    def set_share_policy(self, policy: str) -> str:
        """Set who gets our name and photo. `off` also rotates the profile key (and
        re-encrypts the relay's copy under the new one), so people who had the old key stop
        seeing updates; what they already saved stays on their devices."""
        if policy not in SHARE_POLICIES:
            raise errors.UsageError(f"unknown share policy {policy!r}", hint="use contacts, ask or off")
        self._account()
        if policy == "off":
            with self.store.transaction():
                self.store.set_setting(SETTING_SHARE, policy)
            self.rotate_profile_key()
            return policy
        with self.store.transaction():  # a new revision, so our other devices take the change
            self.store.set_setting(SETTING_SHARE, policy)
            self._bump_revision()
        self._announce_profile(self._account())
        return policy

    def share_pending(self, handle: str) -> bool:
        """True if a message to `handle` now would need an answer first: the policy is
        `ask` and we never answered for them (the CLI asks, a script passes share_profile)."""
        account = self._account()
        if self.share_policy() != "ask" or not account.profile_key:
            return False
        handle = canonical_handle(handle)
        if handle == account.handle:
            return False
        contact = self.store.contact_by_handle(handle)
        return contact is None or contact.share_profile not in SHARE_ANSWERS

    def _profile_for(self, account: LocalAccount, contact: Contact,
                     share_profile: str | None) -> tuple[ProfileShare | None, Contact]:
        """What to give `contact` with a message now: our key and revision, or None; and the
        contact with an explicit answer remembered."""
        if share_profile is not None:
            if share_profile not in SHARE_ANSWERS:
                raise errors.UsageError("share_profile must be 'yes' or 'no'")
            contact = replace(contact, share_profile=share_profile)
        if contact.account_id == account.account_id or not account.profile_key:
            return None, contact
        policy = self.share_policy()
        if policy == "off" or contact.share_profile == "no":
            return None, contact
        if contact.share_profile == "yes" or (policy == "contacts" and contact.in_contacts):
            return ProfileShare(account.profile_key, self.profile_revision()), contact
        return None, contact

    # --- receiving ---

    @staticmethod
    def _received_profile(contact: Contact, content: Content) -> Contact:
        """A contact's message carried their profile key: keep it (a new key replaces the
        old one; the same key with a higher revision means their profile changed)."""
        p = content.profile
        if p is None:
            return contact
        if p.key != contact.profile_key:
            return replace(contact, profile_key=p.key, profile_revision=p.revision)
        if p.revision > contact.profile_revision:
            return replace(contact, profile_revision=p.revision)
        return contact

    def _own_profile_update(self, account: LocalAccount, content: Content) -> None:
        """Another of our devices changed our profile key, revision or policy (a newer
        revision wins; a replayed or older one changes nothing)."""
        p = content.profile
        if p is None or p.revision <= self.profile_revision():
            return
        self.store.save_account(replace(account, profile_key=p.key))
        self.store.set_setting(SETTING_REVISION, str(p.revision))
        self.store.set_setting(SETTING_SHARE, p.share)

    # --- our own key ---

    def rotate_profile_key(self) -> bytes:
        """A new profile key (and revision), told to our other devices."""
        account = self._account()
        with self.store.transaction():
            account = replace(self._account(), profile_key=self._rng(32))
            self.store.save_account(account)
            self.store.set_setting(SETTING_REVISION, str(self.profile_revision() + 1))
        self._announce_profile(account)
        try:  # the relay's access check follows the key: the old key's holders get 401
            self.publish_sealed_access()
        except errors.RelayUnavailableError:
            pass  # published before our next send (imsg_cli/sealed.py, ensure_access_published)
        return account.profile_key

    def _bump_revision(self) -> int:
        revision = self.profile_revision() + 1
        self.store.set_setting(SETTING_REVISION, str(revision))
        return revision

    def _announce_profile(self, account: LocalAccount) -> None:
        """Send our key, revision and policy to our other devices (queued in the outbox if
        the relay is out of reach; the next send or receive delivers it)."""
        others = [d for d in self._own_devices(account).devices if d.device_id != account.device_id]
        if not others:
            return
        now = self._now()
        message_id = secrets.token_hex(16) if self._rng is os.urandom else self._rng(16).hex()
        content = Content(message_id, now, KIND_PROFILE, account.handle, account.handle,
                          profile=ProfileShare(account.profile_key, self.profile_revision(), self.share_policy()))
        package, content_ct = env.seal_content(content.encode(), self._rng)
        envelopes = self._encrypt_for(account, account.account_id, others, package, content_ct)
        batch = OutgoingBatch(message_id, account.account_id, tuple(envelopes), now)
        with self.store.transaction():
            self.store.add_outgoing(batch)
        try:
            self._deliver(batch, package, content_ct)
        except errors.RelayUnavailableError:
            pass  # queued: flush_outbox sends it

    # --- linking a device: the address book and sharing state go with the account ---

    @staticmethod
    def _profile_link_fields(contact: Contact) -> dict:
        return {"in_contacts": contact.in_contacts, "nickname": contact.nickname,
                "profile_revision": contact.profile_revision, "share_profile": contact.share_profile,
                "shared_profile_key": base64.b64encode(contact.shared_profile_key).decode()}

    @staticmethod
    def _profile_fields_from_link(contact: Contact, doc: dict) -> Contact:
        """The fields above, from our own device's welcome (checked, never trusted blindly:
        a malformed field is dropped, not fatal)."""
        nickname = doc.get("nickname")
        revision = doc.get("profile_revision")
        try:
            shared = base64.b64decode(doc.get("shared_profile_key") or "", validate=True)
        except (ValueError, TypeError):
            shared = b""
        return replace(
            contact,
            in_contacts=doc.get("in_contacts") is True,
            nickname=nickname if isinstance(nickname, str) and len(nickname) <= MAX_NICKNAME_LEN else "",
            profile_revision=revision if type(revision) is int and 0 <= revision < 1 << 63 else 0,
            share_profile=doc.get("share_profile") if doc.get("share_profile") in SHARE_ANSWERS else "",
            shared_profile_key=shared if len(shared) == 32 else b"",
        )

    def _profile_link_settings(self) -> dict:
        return {"profile_share": self.share_policy(), "profile_revision": self.profile_revision()}

    @staticmethod
    def _profile_settings_from_link(welcome: dict) -> dict[str, str]:
        out = {}
        if welcome.get("profile_share") in SHARE_POLICIES:
            out[SETTING_SHARE] = welcome["profile_share"]
        revision = welcome.get("profile_revision")
        if type(revision) is int and 0 <= revision < 1 << 63:
            out[SETTING_REVISION] = str(revision)
        return out

    # --- the address book ---

    def contacts_add(self, handle: str, nickname: str = "") -> Contact:
        """Put someone in our contacts (looked up and pinned, as a first message would), with
        an optional nickname of our own; the `contacts` policy shares with them."""
        handle = canonical_handle(handle)
        if len(nickname) > MAX_NICKNAME_LEN or any(ord(ch) < 32 for ch in nickname):
            raise errors.UsageError(f"a nickname is at most {MAX_NICKNAME_LEN} printable characters")
        account = self._account()
        if handle == account.handle:
            raise errors.UsageError("that is your own handle")
        contact, _ = self._resolve(handle)
        with self.store.transaction():
            contact = replace(self.store.get_contact(contact.account_id) or contact, in_contacts=True,
                              nickname=nickname or contact.nickname)
            self.store.save_contact(contact)
        return contact

    def contacts_remove(self, handle: str) -> Contact:
        """Take someone out of our contacts: the `contacts` policy stops sharing with them
        (the key they already hold stays theirs: `imsg profile share off` rotates it)."""
        handle = canonical_handle(handle)
        self._account()
        contact = self.store.contact_by_handle(handle)
        if contact is None or not contact.in_contacts:
            raise errors.UnknownContactError(f"{handle} is not in your contacts")
        with self.store.transaction():
            contact = replace(contact, in_contacts=False, nickname="")
            self.store.save_contact(contact)
        return contact

    def _profile_name(self, contact: Contact) -> str:
        """The name `contact` shares with us, from their profile as last fetched."""
        return ""
