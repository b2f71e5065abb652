"""The one narrow context every service of the client shares.

A service gets this object and the few services it builds on (passed in by the facade,
imsg/client/facade.py), never the facade itself. What it holds:

- `store`: the home's Store (every record kind, settings included, through the small
  Protocols in imsg.protocol.stores; writes grouped by `store.transaction()`);
- the relay: `relay()` is the one credentialed RelayClient of this process (made on first
  use, from the account's URL and token), `connect()` a separate one for the calls made
  before this device has a token of its own (init, link, restore), and `anonymous()` the
  credential-free AnonymousRelay (a fresh connection per request, the proxy if set);
- the clock and the randomness: `now_ms()` and `rng(n)`, injectable for tests;
- the account: `account()` loads it (NoAccountError without one), `device()` its keys;
- `problems`: what went wrong without failing the call (see results.Problem).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

from imsg import errors
from imsg.client.results import Problem
from imsg.protocol.identity import DeviceKeys
from imsg.protocol.stores import LocalAccount, Store
from imsg.relay_client import AnonymousRelay, RelayClient

if TYPE_CHECKING:
    # Not imported here: imsg.relay_client imports httpx first (see the note there).
    import httpx

Clock = Callable[[], int]
Rng = Callable[[int], bytes]

# How long a copy to our own devices waits after the message it copies (seconds, drawn
# uniformly): long enough that its timing does not link it to the send (issue 12, C5).
DEFAULT_SYNC_DELAY = (2.0, 30.0)


def parse_sync_delay(text: str) -> tuple[float, float]:
    """IMSG_SYNC_DELAY: "A-B" seconds (or "N": exactly N)."""
    lo, sep, hi = text.strip().partition("-")
    try:
        a, b = float(lo), float(hi) if sep else float(lo)
    except ValueError:
        raise errors.UsageError(
            f"IMSG_SYNC_DELAY={text!r} is not 'A-B' seconds", hint="for example 2-30, or 0"
        ) from None
    if not 0 <= a <= b <= 3600:
        raise errors.UsageError(f"IMSG_SYNC_DELAY={text!r}: need 0 <= A <= B <= 3600 seconds")
    return a, b


class Context:
    def __init__(
        self,
        store: Store,
        *,
        relay_url: str | None,
        now_ms: Clock,
        rng: Rng,
        allow_insecure: bool = False,
        transport: httpx.BaseTransport | None = None,
        proxy: str | None = None,
        sync_delay: tuple[float, float] | None = None,
    ):
        self.store = store
        if sync_delay is None:
            env = os.environ.get("IMSG_SYNC_DELAY")
            sync_delay = parse_sync_delay(env) if env else DEFAULT_SYNC_DELAY
        self.sync_delay = sync_delay
        self.relay_url = relay_url
        self.now_ms = now_ms
        self.rng = rng
        self.allow_insecure = allow_insecure
        self.transport = transport
        self.proxy = proxy
        self.problems: list[Problem] = []
        self._relay: RelayClient | None = None
        self._anonymous: AnonymousRelay | None = None

    # --- the relay ---

    def relay(self) -> RelayClient:
        """The credentialed relay client (this device's token), made on first use."""
        if self._relay is None:
            account = self.store.load_account()
            url = self.relay_url or (account.relay_url if account else None)
            if not url:
                raise errors.UsageError("no relay given", hint="pass --relay URL or set IMSG_RELAY")
            self._relay = RelayClient(
                url,
                account.token if account else None,
                allow_insecure=self.allow_insecure,
                transport=self.transport,
                proxy=self.proxy,
            )
        return self._relay

    def anonymous(self) -> AnonymousRelay:
        """The relay without any credential, each request on a fresh connection (through
        the SOCKS5 proxy, if one is set): the only way recipient data is fetched or sealed
        messages sent (docs/PROTOCOL.md, "what the relay learns")."""
        # One object is fine: it holds no connection (each request opens its own), only
        # the proxy's answer to whether it takes credentials.
        if self._anonymous is None:
            account = self.store.load_account()
            url = self.relay_url or (account.relay_url if account else None)
            if not url:
                raise errors.UsageError("no relay given", hint="pass --relay URL or set IMSG_RELAY")
            self._anonymous = AnonymousRelay(
                url, proxy=self.proxy, allow_insecure=self.allow_insecure, transport=self.transport
            )
        return self._anonymous

    def require_relay_url(self) -> str:
        """The relay given for a new account or device (there is no account to take it from)."""
        if not self.relay_url:
            raise errors.UsageError("no relay given", hint="pass --relay URL or set IMSG_RELAY")
        return self.relay_url

    def connect(self, token: str | None) -> RelayClient:
        """A relay client of its own, for a device that has no account here yet."""
        return RelayClient(
            self.require_relay_url(),
            token,
            allow_insecure=self.allow_insecure,
            transport=self.transport,
            proxy=self.proxy,
        )

    def use_relay(self, relay: RelayClient | None) -> None:
        """Make `relay` the credentialed client (None: close the current one; the next
        `relay()` carries the token the account now holds)."""
        if self._relay is not None and self._relay is not relay:
            self._relay.close()
        self._relay = relay
        self._anonymous = None  # made again from the account the home now holds

    def close(self) -> None:
        self.use_relay(None)

    # --- the account ---

    def account(self) -> LocalAccount:
        account = self.store.load_account()
        if account is None:
            raise errors.NoAccountError()
        return account

    @staticmethod
    def device(account: LocalAccount) -> DeviceKeys:
        return DeviceKeys(account.device_id, account.identity_private, account.signing_private)

    # --- ids and problems ---

    def message_id(self) -> str:
        """A fresh message id: from the OS, or from the injected rng (reproducible tests)."""
        return secrets.token_hex(16) if self.rng is os.urandom else self.rng(16).hex()

    def sync_not_before(self, now: int) -> int:
        """When a copy to our own devices made at `now` may leave: a uniformly random
        point in the sync delay (from the injectable rng, so tests can fix it)."""
        lo, hi = (int(x * 1000) for x in self.sync_delay)
        if hi <= lo:
            return now + lo
        return now + lo + int.from_bytes(self.rng(8), "big") % (hi - lo + 1)

    def report(self, message_id: str, code: str, message: str) -> None:
        self.problems.append(Problem(message_id, code, message))
