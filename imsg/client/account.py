"""The account: creating it (`imsg init`), what it is (`whoami`), and what the relay holds
about it (`privacy report`).

`init` makes the account key and the first device's keys, signs the first device list,
and registers both with the relay under a fresh bearer token; the handle travels only for
the relay to blind (and verify, when it verifies). Then the device's prekeys go up, the
relay's sealed-sender keys are pinned (trust on first use, while the relay is the one the
user chose) and the unidentified-access key is published.
"""

from __future__ import annotations

import base64
import platform
from typing import Any

from imsg import errors
from imsg.client.context import Context
from imsg.client.discovery import Discovery
from imsg.client.prekeys import Prekeys
from imsg.client.reachable import Reachable
from imsg.client.results import WhoAmI
from imsg.client.sealed import SealedSender
from imsg.client.trust import own_devices
from imsg.handles import canonical_handle
from imsg.protocol import discovery
from imsg.protocol.encoding import KEY_ED25519, encode_key
from imsg.protocol.identity import AccountKey, DeviceKeys, DeviceList, fingerprint, seal_device_name
from imsg.protocol.stores import LocalAccount


def new_token(ctx: Context) -> str:
    """A fresh relay bearer token for a new device (256 bits, URL-safe base64)."""
    return base64.urlsafe_b64encode(ctx.rng(32)).rstrip(b"=").decode("ascii")


def whoami(ctx: Context) -> WhoAmI:
    """This home's account and device, as `imsg whoami` shows them."""
    account = ctx.account()
    return WhoAmI(
        account.account_id,
        account.handle,
        account.name,
        account.device_id,
        ctx.relay_url or account.relay_url,
        fingerprint(account.account_public),
        len(own_devices(account).devices),
    )


class Account:
    def __init__(
        self, ctx: Context, prekeys: Prekeys, sealed: SealedSender, reachable: Reachable, discovery: Discovery
    ):
        self.ctx = ctx
        self.store = ctx.store
        self.prekeys = prekeys
        self.sealed = sealed
        self.reachable = reachable
        self.discovery = discovery

    def init(self, handle: str, name: str = "", device_name: str = "") -> WhoAmI:
        """Create the account key, this device's keys and prekeys; register with the relay."""
        ctx = self.ctx
        if self.store.load_account() is not None:
            raise errors.AccountExistsError()
        handle = canonical_handle(handle)
        ctx.require_relay_url()
        now = ctx.now_ms()
        account_key = AccountKey.generate(ctx.rng)
        device = DeviceKeys.generate(1, ctx.rng)
        label = device_name or platform.node() or "first device"
        device_list = account_key.sign_device_list(
            DeviceList(
                account_key.public,
                serial=1,
                signed_at=now,
                devices=(device.entry(now, seal_device_name(account_key.private, 1, label, ctx.rng)),),
            )
        )
        token = new_token(ctx)
        relay = ctx.connect(token)
        try:
            registered = relay.register(
                account_id=account_key.account_id,
                account_key=encode_key(KEY_ED25519, account_key.public),
                handle=handle,
                device_list=device_list,
                device_id=1,
                token=token,
                label=discovery.seal_label(account_key.private, handle, ctx.rng, start=True),
            )
            if registered.get("handle_state") == "pending" and registered.get("code_sent") is False:
                # registered; the relay's verifier failed for now
                ctx.report(
                    "",
                    "code_not_sent",
                    f"the relay could not send a code to {handle} now; ask again with: imsg reachable add {handle}",
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
            profile_key=ctx.rng(32),
        )
        self.store.save_account(account)
        ctx.use_relay(relay)
        self.prekeys.maintain(force=True)
        self.sealed.pin_relay_keys()
        self.discovery.pin_key()  # signed by the sealed-sender key just pinned
        self.sealed.publish_access()
        self.reachable.handles()  # the handle, pending under a relay that verifies
        return self.whoami()

    def whoami(self) -> WhoAmI:
        return whoami(self.ctx)

    def privacy_report(self) -> dict[str, Any]:
        """Everything the relay holds about this account, from its tables (GET /v1/privacy/report)."""
        self.ctx.account()
        return self.ctx.relay().privacy_report()
