"""Name and photo sharing, and the address book.

Who gets our profile key (`Profiles.share_for`), with the policy in the setting `profile.share`:

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
from dataclasses import replace
from pathlib import Path
from typing import Any

from imsg import errors
from imsg.client.context import Context
from imsg.client.delivery import Delivery
from imsg.client.results import OwnProfile, Problem, SavedPhoto
from imsg.client.sealed import SealedSender
from imsg.client.trust import Trust, own_devices
from imsg.handles import canonical_handle
from imsg.protocol import consts
from imsg.protocol import envelope as env
from imsg.protocol import profile as pf
from imsg.protocol.content import KIND_PROFILE, SHARE_POLICIES, Content, ProfileShare
from imsg.protocol.errors import ProtocolError
from imsg.protocol.stores import CachedProfile, Contact, LocalAccount, OutgoingBatch

SETTING_SHARE = "profile.share"
SETTING_REVISION = "profile.revision"
SETTING_PUBLISHED = "profile.published"  # the revision the relay holds (0: none)
DEFAULT_SHARE = "contacts"
SHARE_ANSWERS = ("yes", "no")
MAX_NICKNAME_LEN = 64


class Profiles:
    def __init__(self, ctx: Context, trust: Trust, delivery: Delivery, sealed: SealedSender):
        self.ctx = ctx
        self.store = ctx.store
        self.trust = trust
        self.delivery = delivery
        self.sealed = sealed
        # A revision the relay did not have yet is asked for again by the next process, not
        # on every receive of a long `watch`: (account id, profile key, revision).
        self._misses: set[tuple[str, bytes, int]] = set()

    # --- policy ---

    def policy(self) -> str:
        value = self.store.get_setting(SETTING_SHARE)
        return value if value in SHARE_POLICIES else DEFAULT_SHARE

    def revision(self) -> int:
        try:
            return int(self.store.get_setting(SETTING_REVISION) or 0)
        except ValueError:
            return 0

    def set_policy(self, policy: str) -> str:
        """Set who gets our name and photo. `off` also rotates the profile key (and
        re-encrypts the relay's copy under the new one), so people who had the old key stop
        seeing updates; what they already saved stays on their devices."""
        if policy not in SHARE_POLICIES:
            raise errors.UsageError(f"unknown share policy {policy!r}", hint="use contacts, ask or off")
        self.ctx.account()
        if policy == "off":
            with self.store.transaction():
                self.store.set_setting(SETTING_SHARE, policy)
            self.rotate_key()
            return policy
        with self.store.transaction():  # a new revision, so our other devices take the change
            self.store.set_setting(SETTING_SHARE, policy)
            self._bump_revision()
        self._publish_quietly()
        self.announce(self.ctx.account())
        return policy

    def pending(self, handle: str) -> bool:
        """True if a message to `handle` now would need an answer first: the policy is
        `ask` and we never answered for them (the CLI asks, a script passes share_profile)."""
        account = self.ctx.account()
        if self.policy() != "ask" or not account.profile_key:
            return False
        handle = canonical_handle(handle)
        if handle == account.handle:
            return False
        contact = self.store.contact_by_handle(handle)
        return contact is None or contact.share_profile not in SHARE_ANSWERS

    def share_for(
        self, account: LocalAccount, contact: Contact, share_profile: str | None
    ) -> tuple[ProfileShare | None, Contact]:
        """What to give `contact` with a message now: our key and revision, or None; and the
        contact with an explicit answer remembered."""
        if share_profile is not None:
            if share_profile not in SHARE_ANSWERS:
                raise errors.UsageError("share_profile must be 'yes' or 'no'")
            contact = replace(contact, share_profile=share_profile)
        if contact.account_id == account.account_id or not account.profile_key:
            return None, contact
        policy = self.policy()
        if policy == "off" or contact.share_profile == "no":
            return None, contact
        if contact.share_profile == "yes" or (policy == "contacts" and contact.in_contacts):
            self._publish_quietly()
            return ProfileShare(account.profile_key, self.revision()), contact
        return None, contact

    # --- receiving ---

    def own_update(self, account: LocalAccount, content: Content) -> None:
        """Another of our devices changed our profile key, revision or policy (a newer
        revision wins; a replayed or older one changes nothing)."""
        p = content.profile
        if p is None or p.revision <= self.revision():
            return
        self.store.save_account(replace(account, profile_key=p.key))
        self.store.set_setting(SETTING_REVISION, str(p.revision))
        self.store.set_setting(SETTING_SHARE, p.share)

    # --- our own key ---

    def rotate_key(self) -> bytes:
        """A new profile key (and revision): the relay's copy is re-encrypted under it (which
        replaces the old one, so the old key opens nothing there any more), and our other
        devices are told."""
        current = self._own_profile()  # before the key changes: it may come from the relay
        with self.store.transaction():
            account = replace(self.ctx.account(), profile_key=self.ctx.rng(32))
            self.store.save_account(account)
            self._bump_revision()
        self.publish(current, required=False)
        self.announce(self.ctx.account())
        try:  # the relay's access check follows the key: the old key's holders get 401
            self.sealed.publish_access()
        except errors.RelayUnavailableError:
            pass  # published before our next send (imsg/client/sealed.py, ensure_access_published)
        return account.profile_key

    def _bump_revision(self) -> int:
        revision = self.revision() + 1
        self.store.set_setting(SETTING_REVISION, str(revision))
        return revision

    def announce(self, account: LocalAccount) -> None:
        """Send our key, revision and policy to our other devices (queued in the outbox if
        the relay is out of reach; the next send or receive delivers it)."""
        others = [d for d in own_devices(account).devices if d.device_id != account.device_id]
        if not others:
            return
        now = self.ctx.now_ms()
        message_id = self.ctx.message_id()
        content = Content(
            message_id,
            now,
            KIND_PROFILE,
            account.handle,
            account.handle,
            profile=ProfileShare(account.profile_key, self.revision(), self.policy()),
        )
        package, content_ct = env.seal_content(content.encode(), self.ctx.rng)
        envelopes = self.delivery.encrypt_for(account, account.account_id, others, package, content_ct)
        batch = OutgoingBatch(message_id, account.account_id, tuple(envelopes), now)
        with self.store.transaction():
            self.store.add_outgoing(batch)
        try:
            self.delivery.deliver(batch, package, content_ct)
        except (errors.RelayUnavailableError, errors.SealedRefusedError):
            pass  # queued: flush_outbox sends it

    # --- our name and photo ---

    def change(
        self, name: str | None = None, photo: str | os.PathLike[str] | None = None, *, remove_photo: bool = False
    ) -> OwnProfile:
        """Change our name and/or photo: encrypted under our profile key, stored at the relay
        (replacing the old copy), and told to our other devices; everyone we share with gets
        the new revision with our next message to them. A photo must be a JPEG, PNG, WebP or
        HEIC file of at most 512 KiB; it is never decoded."""
        if photo is not None and remove_photo:
            raise errors.UsageError("give --photo or --no-photo, not both")
        current = self._own_profile()
        new_name = current.name if name is None else name
        try:
            pf.check_name(new_name)
        except ValueError as exc:
            raise errors.UsageError(f"cannot use that name: {exc}") from None
        new_photo = b"" if remove_photo else (current.photo if photo is None else _read_photo(Path(photo)))
        with self.store.transaction():
            self.store.save_account(replace(self.ctx.account(), name=new_name))
            self._bump_revision()
        try:
            self.publish(pf.Profile(new_name, new_photo), required=True)
        except errors.RelayUnavailableError as exc:
            raise errors.RelayUnavailableError(
                f"{exc}; your name and photo are saved here",
                hint="they go to the relay (and your other devices) before your next shared message",
            ) from None
        self.announce(self.ctx.account())
        return self.show()

    def show(self) -> OwnProfile:
        account = self.ctx.account()
        own = self._own_profile()
        revision = self.revision()
        shared = tuple(
            sorted(
                c.handle
                for c in self.store.contacts()
                if c.status != "replaced" and c.shared_profile_key and c.shared_profile_key == account.profile_key
            )
        )
        return OwnProfile(
            own.name,
            own.photo_type,
            len(own.photo),
            revision,
            self.policy(),
            self._published() == revision and revision > 0,
            shared,
        )

    def _published(self) -> int:
        try:
            return int(self.store.get_setting(SETTING_PUBLISHED) or 0)
        except ValueError:
            return 0

    def _own_profile(self) -> pf.Profile:
        """Our name and photo as of our current revision: from this home, or (after another
        of our devices changed them) from the relay, checked under our own key."""
        account = self.ctx.account()
        cached = self.store.cached_profile(account.account_id)
        revision = self.revision()
        if (cached is None or cached.revision < revision) and revision > 0 and account.profile_key:
            try:
                fetched = self._fetch_profile(account.account_id, account.profile_key, revision)
            except errors.RelayUnavailableError:
                fetched = None
            except errors.SecurityError as exc:  # ours, tampered with: keep what this home holds
                self.ctx.problems.append(_profile_problem(account.handle, str(exc)))
                fetched = None
            if fetched is not None:
                with self.store.transaction():
                    self.store.save_cached_profile(fetched)
                    self.store.save_account(replace(self.ctx.account(), name=fetched.name))
                return pf.Profile(fetched.name, fetched.photo)
        return pf.Profile(account.name, cached.photo if cached is not None else b"")

    def publish(self, profile: pf.Profile, *, required: bool) -> None:
        """Store `profile` at the relay under our current key and revision; remember it here
        first, so a relay out of reach loses nothing (the next share publishes it). Without
        `required`, an empty profile never published before is not published at all."""
        account = self.ctx.account()
        revision = self.revision()
        with self.store.transaction():
            self.store.save_cached_profile(
                CachedProfile(account.account_id, revision, profile.name, profile.photo, self.ctx.now_ms())
            )
        if not required and not profile.name and not profile.photo and not self._published():
            return
        blob = pf.seal(account.profile_key, account.account_id, revision, profile, self.ctx.rng)
        try:
            self.ctx.relay().put_profile(pf.key_id(account.profile_key, account.account_id).hex(), blob)
        except errors.RelayRefusedError as exc:
            if exc.relay_code == "stale_revision":
                raise errors.LocalStateError(
                    "another of your devices changed your profile since this one last heard of it",
                    hint="run imsg receive, then try again",
                ) from None
            raise
        with self.store.transaction():
            self.store.set_setting(SETTING_PUBLISHED, str(revision))

    def _publish_quietly(self) -> None:
        """Publish the current revision if the relay lacks it (before sharing it, after a
        policy change); a relay out of reach is retried on the next share."""
        revision = self.revision()
        if revision and self._published() == revision:
            return
        own = self._own_profile()
        if not revision:  # a name from `init` never published: it gets a first revision
            if not own.name and not own.photo:
                return
            with self.store.transaction():
                self._bump_revision()
        try:
            self.publish(own, required=False)
            self.announce(self.ctx.account())  # the revision our other devices missed
        except (errors.RelayUnavailableError, errors.RelayRefusedError, errors.LocalStateError):
            pass

    # --- their names and photos ---

    def _fetch_profile(self, account_id: str, profile_key: bytes, min_revision: int) -> CachedProfile | None:
        """Fetch and open an account's profile; None if the relay has none under this key,
        or only an older revision than `min_revision` (not yet uploaded: retried later). A
        blob that fails any check is a security failure."""
        # Anonymous, a connection of its own: the relay does not learn who reads whose profile.
        key_id = pf.key_id(profile_key, account_id).hex()
        blob = self.ctx.anonymous().get_profile(account_id, key_id, max_bytes=pf.MAX_BLOB)
        if blob is None:
            return None
        try:
            revision, profile = pf.open_(profile_key, account_id, blob)
        except ProtocolError as exc:
            raise errors.SecurityError(f"the relay served a profile that fails its checks: {exc}") from None
        if revision < min_revision:  # authentic but older than announced: not taken
            return None
        return CachedProfile(account_id, revision, profile.name, profile.photo, self.ctx.now_ms())

    def refresh(self, contact: Contact) -> CachedProfile | None:
        """The contact's profile, refetched if they announced a newer revision than the copy
        held. Without their key (or once they rotated it away) the copy held stays."""
        cached = self.store.cached_profile(contact.account_id)
        if (
            not contact.profile_key
            or contact.profile_revision == 0
            or (cached is not None and cached.revision >= contact.profile_revision)
        ):
            return cached
        misses = self._misses
        wanted = (contact.account_id, contact.profile_key, contact.profile_revision)
        if wanted in misses:
            return cached
        fetched = self._fetch_profile(contact.account_id, contact.profile_key, contact.profile_revision)
        if fetched is None:
            misses.add(wanted)
            return cached
        with self.store.transaction():
            self.store.save_cached_profile(fetched)
        return fetched

    def refresh_all(self) -> None:
        """After receiving: fetch the profiles whose owners announced a new revision. A
        tampered one is reported (as a rejected message is); a relay out of reach, retried."""
        for contact in self.store.contacts():
            if contact.status == "replaced" or not contact.profile_key:
                continue
            try:
                self.refresh(contact)
            except errors.SecurityError as exc:
                self.ctx.problems.append(_profile_problem(contact.handle, str(exc)))
            except (errors.RelayUnavailableError, errors.RelayRefusedError):
                return

    def contact_photo(self, handle: str, out: str | os.PathLike[str]) -> SavedPhoto:
        """Write the photo `handle` shares with us to `out` (0600, never over an existing
        file), refetching it first if they announced a newer one. Its bytes are written as
        they came, after the type check; nothing decodes them."""
        handle = canonical_handle(handle)
        self.ctx.account()
        contact = self.store.contact_by_handle(handle)
        if contact is None:
            raise errors.UnknownContactError(f"no contact {handle}")
        try:
            cached = self.refresh(contact)
        except errors.RelayUnavailableError:
            cached = self.store.cached_profile(contact.account_id)
        if cached is None or not cached.photo:
            raise errors.LocalStateError(f"{handle} shares no photo with you")
        path = Path(out).expanduser()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise errors.LocalStateError(f"{path} exists; not overwriting it") from None
        except OSError as exc:
            raise errors.LocalStateError(f"cannot write {path}: {exc.strerror}") from None
        with os.fdopen(fd, "wb") as f:
            f.write(cached.photo)
        return SavedPhoto(path, pf.photo_type(cached.photo) or "", len(cached.photo))

    def link_settings(self) -> dict[str, Any]:
        """Our policy and revision, for a device being linked (see link_fields)."""
        return {"profile_share": self.policy(), "profile_revision": self.revision()}

    # --- the address book ---

    def contacts_add(self, handle: str, nickname: str = "") -> Contact:
        """Put someone in our contacts (looked up and pinned, as a first message would), with
        an optional nickname of our own; the `contacts` policy shares with them."""
        handle = canonical_handle(handle)
        if len(nickname) > MAX_NICKNAME_LEN or any(ord(ch) < 32 for ch in nickname):
            raise errors.UsageError(f"a nickname is at most {MAX_NICKNAME_LEN} printable characters")
        account = self.ctx.account()
        if handle == account.handle:
            raise errors.UsageError("that is your own handle")
        contact, _ = self.trust.resolve(handle)
        with self.store.transaction():
            contact = replace(
                self.store.get_contact(contact.account_id) or contact,
                in_contacts=True,
                nickname=nickname or contact.nickname,
            )
            self.store.save_contact(contact)
        return contact

    def contacts_remove(self, handle: str) -> Contact:
        """Take someone out of our contacts: the `contacts` policy stops sharing with them
        (the key they already hold stays theirs: `imsg profile share off` rotates it)."""
        handle = canonical_handle(handle)
        self.ctx.account()
        contact = self.store.contact_by_handle(handle)
        if contact is None or not contact.in_contacts:
            raise errors.UnknownContactError(f"{handle} is not in your contacts")
        with self.store.transaction():
            contact = replace(contact, in_contacts=False, nickname="")
            self.store.save_contact(contact)
        return contact


def received_profile(contact: Contact, content: Content) -> Contact:
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


# --- linking a device: the address book and sharing state go with the account ---


def link_fields(contact: Contact) -> dict[str, Any]:
    return {
        "in_contacts": contact.in_contacts,
        "nickname": contact.nickname,
        "profile_revision": contact.profile_revision,
        "share_profile": contact.share_profile,
        "shared_profile_key": base64.b64encode(contact.shared_profile_key).decode(),
    }


def fields_from_link(contact: Contact, doc: dict[str, Any]) -> Contact:
    """The fields above, from our own device's welcome (checked, never trusted blindly:
    a malformed field is dropped, not fatal)."""
    nickname = doc.get("nickname")
    revision = doc.get("profile_revision")
    try:
        shared = base64.b64decode(doc.get("shared_profile_key") or "", validate=True)
    except (ValueError, TypeError):
        shared = b""
    share = doc.get("share_profile")
    return replace(
        contact,
        in_contacts=doc.get("in_contacts") is True,
        nickname=nickname if isinstance(nickname, str) and len(nickname) <= MAX_NICKNAME_LEN else "",
        profile_revision=revision if type(revision) is int and 0 <= revision < 1 << 63 else 0,
        share_profile=share if isinstance(share, str) and share in SHARE_ANSWERS else "",
        shared_profile_key=shared if len(shared) == 32 else b"",
    )


def settings_from_link(welcome: dict[str, Any]) -> dict[str, str]:
    """Our policy and revision from our own device's welcome (see Profiles.link_settings)."""
    out = {}
    if welcome.get("profile_share") in SHARE_POLICIES:
        out[SETTING_SHARE] = str(welcome["profile_share"])
    revision = welcome.get("profile_revision")
    if type(revision) is int and 0 <= revision < 1 << 63:
        out[SETTING_REVISION] = str(revision)
    return out


def _read_photo(path: Path) -> bytes:
    """A photo file's bytes, refused (before reading it all) when too large, and refused
    unless it starts like a JPEG, PNG, WebP or HEIC image."""
    try:
        with path.open("rb") as f:
            data = f.read(consts.PROFILE_PHOTO_MAX + 1)
    except OSError as exc:
        raise errors.UsageError(f"cannot read {path}: {exc.strerror}") from None
    try:
        pf.check_photo(data)
    except ValueError as exc:
        raise errors.UsageError(f"cannot use {path} as a photo: {exc}") from None
    return data


def _profile_problem(handle: str, message: str) -> Problem:
    return Problem("", "profile_rejected", f"profile of {handle}: {message}")
