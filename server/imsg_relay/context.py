"""The relay context: everything a route function needs, built once per app by `create_app`.

One `RelayContext` per relay, never a module global, so tests run many relays side by side.
It holds the injected parts (settings, storage, push, blobs, clock), the in-memory rate
limiters, and the key material the lifespan loads at start-up (relay secret, discovery
key) or on first use (sealed-sender signing keys). Route functions (imsg_relay/routes/)
take it as their first argument.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.requests import Request

from imsg_relay.auth import bearer_token_hash
from imsg_relay.blobs.base import BlobStore
from imsg_relay.discovery import DiscoveryKey
from imsg_relay.errors import RelayError
from imsg_relay.push import Push
from imsg_relay.ratelimit import RateLimiter
from imsg_relay.settings import Settings
from imsg_relay.storage.base import DeviceRef, Storage
from imsg_relay.verifiers import Verifier, build_verifier


@dataclass(frozen=True)
class Limits:
    """Every rate limiter of one relay. Counts and times only, in memory, keyed by a
    credential, an account, a channel id or a fixed name: never by address."""

    send: RateLimiter
    request: RateLimiter
    lookup: RateLimiter
    register: RateLimiter  # relay-wide: registrations and restores have no credential yet
    sealed: RateLimiter  # allowed sealed sends (no credential): counted per recipient account
    sealed_refused: RateLimiter  # refused sealed attempts (bad access key), per recipient
    account_read: RateLimiter  # unauthenticated account reads, per target account
    account_read_global: RateLimiter  # ... and relay-wide
    bundle: RateLimiter  # bundle fetches authorized by an access key, per target account
    provisioning: RateLimiter  # unauthenticated provisioning requests, per channel id
    provisioning_global: RateLimiter  # ... and relay-wide
    discovery: RateLimiter  # OPRF evaluations, one event per element, per account
    bucket_read: RateLimiter  # discovery bucket reads (no credential), relay-wide
    code_handle: RateLimiter  # verification codes sent, per handle tag
    code_account: RateLimiter  # ... and per account
    code_guess: RateLimiter  # code guesses per account
    profile: RateLimiter  # profile reads, per account read
    profile_global: RateLimiter  # ... and relay-wide
    blob_read: RateLimiter  # unauthenticated blob downloads, per blob id
    blob_read_global: RateLimiter  # ... and relay-wide

    @classmethod
    def from_settings(cls, s: Settings) -> Limits:
        return cls(
            send=RateLimiter(s.send_rate, s.send_burst),
            request=RateLimiter(s.request_rate, s.request_burst),
            lookup=RateLimiter(s.lookup_rate, s.lookup_burst),
            register=RateLimiter(s.register_rate, s.register_burst),
            sealed=RateLimiter(s.sealed_rate, s.sealed_burst),
            sealed_refused=RateLimiter(s.sealed_refused_rate, s.sealed_refused_burst),
            account_read=RateLimiter(s.account_read_rate, s.account_read_burst),
            account_read_global=RateLimiter(s.account_read_global_rate, s.account_read_global_burst),
            bundle=RateLimiter(s.bundle_rate, s.bundle_burst),
            provisioning=RateLimiter(s.provisioning_rate, s.provisioning_burst),
            provisioning_global=RateLimiter(s.provisioning_global_rate, s.provisioning_global_burst),
            discovery=RateLimiter(s.discovery_rate, s.discovery_burst),
            bucket_read=RateLimiter(s.bucket_read_rate, s.bucket_read_burst),
            code_handle=RateLimiter(s.code_handle_rate, s.code_handle_burst),
            code_account=RateLimiter(s.code_account_rate, s.code_account_burst),
            code_guess=RateLimiter(s.code_guess_rate, s.code_guess_burst),
            # profile reads share the provisioning settings, in buckets of their own
            profile=RateLimiter(s.provisioning_rate, s.provisioning_burst),
            profile_global=RateLimiter(s.provisioning_global_rate, s.provisioning_global_burst),
            # blob downloads (no credential since issue 12) too
            blob_read=RateLimiter(s.provisioning_rate, s.provisioning_burst),
            blob_read_global=RateLimiter(s.provisioning_global_rate, s.provisioning_global_burst),
        )


@dataclass
class CountCache:
    """How many handles are discoverable, as last read (monotonic time, count): the bucket
    size policy follows the registry this closely, without a count per lookup."""

    at: float = 0.0
    count: int = 0


@dataclass
class RelayContext:
    settings: Settings
    storage: Storage
    push: Push
    blobs: BlobStore
    clock: Callable[[], float] = time.time
    limits: Limits = field(init=False)
    verifier: Verifier = field(init=False)
    # Loaded by the lifespan (load_keys), before the first request is served.
    secret: bytes = field(default=b"", repr=False)
    _discovery_key: DiscoveryKey | None = field(default=None, repr=False)
    # Read on first use; set back to None to make the relay read the file again (what a
    # restart does after `imsg-relay rotate-sealed-key`).
    _sealed_keys: list[Ed25519PrivateKey] | None = field(default=None, repr=False)
    discoverable: CountCache = field(default_factory=CountCache)
    key_fingerprint: bytes = b""  # of the key set load_keys loaded
    openapi_body: bytes = b""

    def __post_init__(self) -> None:
        self.limits = Limits.from_settings(self.settings)
        self.verifier = build_verifier(self.settings)

    def load_keys(self) -> None:
        """The relay secret, the discovery key and the sealed-sender keys: the operator's key
        set (--keys / IMSG_RELAY_KEYS), else their 0600 files in the data directory (made
        on first start). Their fingerprint is checked against the database's at start-up."""
        from imsg_relay.keyset import load_key_set

        keys = load_key_set(self.settings)
        self.secret = keys.relay_secret
        self._discovery_key = DiscoveryKey.from_seed(keys.discovery_seed)
        self._sealed_keys = list(keys.sealed_keys)
        self.key_fingerprint = keys.fingerprint()

    @property
    def discovery_key(self) -> DiscoveryKey:
        if self._discovery_key is None:
            raise RuntimeError("the discovery key is loaded at start-up (lifespan); the relay has not started")
        return self._discovery_key

    def sealed_signing_keys(self) -> list[Ed25519PrivateKey]:
        """The sender-certificate keys, oldest first (the last one signs)."""
        if self._sealed_keys is None:
            from imsg_relay.keyset import load_key_set

            self._sealed_keys = list(load_key_set(self.settings).sealed_keys)
        return self._sealed_keys

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def authenticate(self, request: Request) -> DeviceRef:
        """The device whose bearer token the request carries (401 otherwise), counted
        against its request rate."""
        digest = bearer_token_hash(request.headers.get("authorization"))
        device = await self.storage.authenticate(digest)
        if device is None:
            raise RelayError("unauthorized", "unknown token")
        self.limits.request.check(device)
        return device
