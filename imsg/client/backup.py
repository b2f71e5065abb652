"""Encrypted backups at the relay, and restoring one as a new device.

    code = client.backup_on()          # shown once; the relay never sees it
    client.backup_now()                # also automatic: see backup_if_due
    client.backup_status(); client.backup_off()
    Client.open(new_home, relay=...).backup_restore("alice@example.com", code)

A backup holds what a new device needs: the account key, the profile key, contacts (with
verification state and profile keys), message history, attachment records and settings.
Never ratchet sessions, prekeys, this device's keys or its relay token: a restore enrols a
new device with fresh keys (SECURITY-TESTS 13), signed into the account's device list by
the account key from the backup, and every session starts afresh.

Automatic backups: while backups are on, `receive` (and so `watch`, which calls it in a
loop) makes one when the last is older than BACKUP_INTERVAL_MS, retrying a failure after
RETRY_AFTER_MS. A failure never fails the receive: it is reported as a Problem.

Backup state is per device (setting "backup.state"): the recovery secret, when the last
backup was made and how big it was. Backups are on for a restored device (the user just
typed the code), so a lost phone's replacement keeps backing up.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from imsg import errors
from imsg.client.context import Context
from imsg.client.devices import Devices
from imsg.client.profiles import Profiles
from imsg.client.results import BackupResult, BackupStatus, WhoAmI
from imsg.client.trust import accept_device_list
from imsg.handles import canonical_handle
from imsg.protocol import backup as bk
from imsg.protocol.encoding import KEY_ED25519, encode_key
from imsg.protocol.errors import DecodeError, DecryptionError
from imsg.protocol.identity import DeviceKeys, verify_device_list
from imsg.protocol.stores import LocalAccount

STATE_KEY = "backup.state"
# Settings that belong to one device, never carried to another: backup state (it holds the
# recovery secret), anything about how this home is locked, and the relay's short-lived
# sender certificate, which names this device.
DEVICE_LOCAL_PREFIXES = ("backup.", "passcode.", "vault.", "lock.", "sealed.certificate", "sealed.cert_refresh_at")
BACKUP_INTERVAL_MS = 24 * 3600 * 1000  # a day, as phones back up nightly
RETRY_AFTER_MS = 3600 * 1000  # after a failed automatic backup
MAX_DOWNLOAD = bk.padded_length(bk.MAX_PLAINTEXT + 8) + bk.HEADER_LEN + 16


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class Backup:
    def __init__(self, ctx: Context, devices: Devices, profiles: Profiles):
        self.ctx = ctx
        self.store = ctx.store
        self.devices = devices
        self.profiles = profiles

    # --- state ---

    def _state(self) -> dict[str, Any] | None:
        raw = self.store.get_setting(STATE_KEY)
        if not raw:
            return None
        try:
            state: dict[str, Any] = json.loads(raw)
            base64.b64decode(state["secret"], validate=True)
            return state
        except (ValueError, KeyError, TypeError):
            raise errors.LocalStateError(
                "this home's backup settings are damaged",
                hint="turn backups off and on again: imsg backup off; imsg backup on",
            ) from None

    def _save_state(self, state: dict[str, Any] | None) -> None:
        with self.store.transaction():
            self.store.set_setting(STATE_KEY, None if state is None else json.dumps(state, sort_keys=True))

    # --- making one ---

    def _contents(self, account: LocalAccount) -> bk.BackupContents:
        if account.account_private is None:  # backup_on refuses such a device
            raise errors.LocalStateError("this device does not hold the account key, so it cannot back up")
        messages = []
        for chat in self.store.conversations():
            messages.extend(self.store.history(chat.peer_account_id, 1 << 40))
        attachments = [a for m in messages for a in self.store.attachments(m.message_id)]
        settings = {k: v for k, v in self.store.settings().items() if not k.startswith(DEVICE_LOCAL_PREFIXES)}
        return bk.BackupContents(
            self.ctx.now_ms(),
            account.account_id,
            account.handle,
            account.name,
            account.account_private,
            account.account_public,
            account.profile_key,
            account.device_list,
            tuple(self.store.contacts()),
            tuple(messages),
            tuple(attachments),
            settings,
        )

    def _upload(self, account: LocalAccount, secret: bytes) -> BackupResult:
        contents = self._contents(account)
        try:
            sealed = bk.seal_backup(secret, bk.encode_document(contents), self.ctx.rng)
        except ValueError as exc:
            raise errors.LocalStateError(
                f"cannot back up: {exc}", hint="delete old messages (imsg delete) to make it smaller"
            ) from None
        self.ctx.relay().put_backup(sealed, bk.access_hash(secret))
        return BackupResult(len(sealed), len(contents.messages), len(contents.contacts), contents.created_at)

    def on(self) -> str:
        """Make a recovery code, upload the first backup under it, and return the code (show
        it once: it is the only way to read the backup). Nothing changes if the upload fails."""
        account = self.ctx.account()
        if account.account_private is None:
            raise errors.LocalStateError(
                "this device does not hold the account key, so its backup could not enrol a new device",
                hint="turn backups on from your first device",
            )
        if self._state() is not None:
            raise errors.LocalStateError(
                "backups are already on", hint="for a new recovery code: imsg backup off, then imsg backup on"
            )
        secret = self.ctx.rng(bk.SECRET_LEN)
        result = self._upload(account, secret)
        self._save_state(
            {
                "secret": base64.b64encode(secret).decode("ascii"),
                "last_at": result.at,
                "size": result.size,
                "last_error": None,
                "last_attempt_at": result.at,
            }
        )
        return bk.recovery_code(secret)

    def now(self) -> BackupResult:
        account = self.ctx.account()
        state = self._state()
        if state is None:
            raise errors.LocalStateError("backups are off", hint="turn them on with: imsg backup on")
        now = self.ctx.now_ms()
        try:
            result = self._upload(account, base64.b64decode(state["secret"]))
        except errors.ImsgError as exc:
            self._save_state({**state, "last_error": str(exc), "last_attempt_at": now})
            raise
        self._save_state(
            {**state, "last_at": result.at, "size": result.size, "last_error": None, "last_attempt_at": now}
        )
        return result

    def if_due(self) -> BackupResult | None:
        """Back up if backups are on and the last one is over a day old (a failed attempt
        is retried after an hour). Cheap when nothing is due: one settings read."""
        state = self._state()
        if state is None:
            return None
        now = self.ctx.now_ms()
        if now - int(state.get("last_at") or 0) < BACKUP_INTERVAL_MS:
            return None
        if state.get("last_error") and now - int(state.get("last_attempt_at") or 0) < RETRY_AFTER_MS:
            return None
        return self.now()

    def status(self, *, relay: bool = True) -> BackupStatus:
        self.ctx.account()
        state = self._state()
        remote = self.ctx.relay().backup_status() if relay else None
        relay_size = remote.get("size") if remote else None
        relay_updated_at = remote.get("updated_at") if remote else None
        if state is None:
            return BackupStatus(False, None, None, None, None, relay_size, relay_updated_at)
        last_at = state.get("last_at")
        return BackupStatus(
            True,
            last_at,
            state.get("size"),
            (last_at or 0) + BACKUP_INTERVAL_MS,
            state.get("last_error"),
            relay_size,
            relay_updated_at,
        )

    def off(self) -> bool:
        """Delete the relay's copy at once, then forget the recovery code here. Returns
        whether the relay held a backup. If the relay cannot be reached nothing changes."""
        self.ctx.account()
        deleted = self.ctx.relay().delete_backup()
        self._save_state(None)
        return deleted

    # --- restoring ---

    def restore(self, handle: str, code: str, name: str = "") -> WhoAmI:
        """On a fresh home: fetch and decrypt the backup the recovery code opens, enrol this
        home as a NEW device of the account (fresh keys, signed into the device list with
        the account key from the backup), then store its history, contacts and settings.
        Nothing is written to the home unless all of that succeeded."""
        if self.store.load_account() is not None:
            raise errors.AccountExistsError()
        handle = canonical_handle(handle)
        try:
            secret = bk.parse_recovery_code(code)
        except bk.RecoveryCodeError as exc:
            raise errors.UsageError(
                f"not a valid recovery code: {exc}",
                hint="type the 36 characters imsg backup on showed; dashes are optional",
            ) from None
        with self.ctx.connect(_b64url(bk.access_token(secret))) as relay:
            try:
                remote = relay.restore_account()
                sealed = relay.restore_backup(MAX_DOWNLOAD)
            except errors.RelayRefusedError as exc:
                if exc.status == 404:
                    raise errors.RelayRefusedError(
                        "this relay holds no backup for that recovery code",
                        status=404,
                        relay_code="not_found",
                        hint="check the code and --relay; a backup turned off is gone",
                    ) from None
                raise
            try:
                contents = bk.decode_document(bk.open_backup(secret, sealed))
            except DecryptionError as exc:
                raise errors.SecurityError(str(exc)) from None
            except DecodeError as exc:
                raise errors.SecurityError(f"the backup is malformed: {exc}") from None
            if canonical_handle(contents.handle) != handle:
                raise errors.UsageError(
                    f"that recovery code opens the backup of another handle, not {handle}",
                    hint="check the handle you typed",
                )
            # The relay's account must be the backup's, and its device list signed by the
            # account key and not older than the one in the backup.
            if remote.account_id != contents.account_id or remote.account_key != encode_key(
                KEY_ED25519, contents.account_public
            ):
                raise errors.UntrustedIdentityError("the relay served another account for this backup")
            current = accept_device_list(
                remote.device_list,
                contents.account_public,
                verify_device_list(contents.device_list, contents.account_public),
                "our own",
            )
            keys = DeviceKeys.generate(0, self.ctx.rng)  # its id comes from the list
            device_id, device_list = self.devices.list_with_device(
                contents.account_private,
                current,
                keys.identity.public,
                keys.signing.public,
                name or "restored device",
                keys.sealed.public,
            )
            raw_token = self.ctx.rng(32)
            signed_at = self.ctx.now_ms()
            statement = bk.restore_statement(contents.account_id, device_id, raw_token, device_list, signed_at)
            try:
                relay.restore_device(
                    device_id,
                    token=_b64url(raw_token),
                    device_list=device_list,
                    signed_at=signed_at,
                    signature=bk.sign_restore(contents.account_private, statement),
                )
            except errors.RelayRefusedError as exc:
                if exc.status == 401:
                    raise errors.RelayRefusedError(
                        f"the relay refused to enrol this device: {exc}",
                        status=401,
                        relay_code=exc.relay_code,
                        hint="check this machine's clock; then try again",
                    ) from None
                raise
        now = self.ctx.now_ms()
        account = LocalAccount(
            account_id=contents.account_id,
            handle=contents.handle,
            name=contents.name,
            account_public=contents.account_public,
            account_private=contents.account_private,
            device_id=device_id,
            identity_private=keys.identity.private,
            signing_private=keys.signing.private,
            device_list=device_list,
            relay_url=relay.base_url,
            token=_b64url(raw_token),
            created_at=now,
            profile_key=contents.profile_key,
        )
        settings = dict(contents.settings)
        # Backups stay on for the restored device, under the code the user just typed.
        settings[STATE_KEY] = json.dumps(
            {
                "secret": base64.b64encode(secret).decode("ascii"),
                "last_at": now,
                "size": len(sealed),
                "last_error": None,
                "last_attempt_at": now,
            },
            sort_keys=True,
        )
        contacts = [c for c in contents.contacts if c.account_id != contents.account_id]
        me = self.devices.install_account(account, contacts, contents.messages, contents.attachments, settings)
        # Our other devices did not sign this device in (the backup's account key did), so
        # they hold the older list. A message from us makes each of them refetch the signed
        # list at its next receive, and from then on they sync what they send to us too.
        try:
            self.profiles.announce(self.ctx.account())
        except errors.ImsgError:
            pass  # best effort: their next send to us, or ours to them, does the same
        return me
