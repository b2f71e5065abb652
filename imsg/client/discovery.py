"""The private lookup: who holds a handle, without the relay learning which handles were
asked about (docs/PROTOCOL.md §8a). First contacts, first messages received, `imsg lookup`
and the background re-verification (Trust) go through here; a send to a pinned contact
never does.

Each handle is blinded and evaluated through the relay's VOPRF (RFC 9497 mode 0x01,
against the account's rate budget); the one proof of each evaluation must verify under the
relay's discovery key pinned at init/link, which is taken (and later replaced) only when a
trusted sealed-sender key signed it. The output's tag names a k-anonymous bucket, and only
the bucket's prefix goes to the relay — read with no credential, on a fresh connection.
The client keeps its own floor (MAX_PREFIX_BITS, MIN_BUCKET) and never reads a longer
prefix for a handle than the first lookup of it did. Anything else: SecurityError (exit 6),
never a narrower lookup.

Settings this module owns:

    discovery.key            JSON {"public_key": b64, "key_id": hex16}: the pinned VOPRF key
    discovery.bits:<handle>  the prefix length this handle was first looked up with
    reachable.unverified:<handle>  a contact handle only claimed, not verified (last lookup)
"""

from __future__ import annotations

import base64
import json

from imsg import errors
from imsg.client.context import Context
from imsg.client.results import LookupResult
from imsg.client.sealed import SealedSender
from imsg.handles import canonical_handle
from imsg.protocol import discovery
from imsg.protocol.errors import DecodeError
from imsg.protocol.sealed import relay_key_id

MAX_BATCH = 1000  # elements per evaluation request and prefixes per bucket request
UNVERIFIED = "reachable.unverified:"  # setting prefix: a contact handle only claimed, not verified
SETTING_KEY = "discovery.key"
BITS = "discovery.bits:"  # setting prefix: the prefix length a handle was first looked up with
COVER_PREFIX = "\x00cover:"  # cover inputs: never a canonical handle, never remembered


class Discovery:
    def __init__(self, ctx: Context, sealed: SealedSender):
        self.ctx = ctx
        self.sealed = sealed

    # --- the pinned discovery key ---

    def pinned_key(self) -> discovery.DiscoveryKey | None:
        raw = self.ctx.store.get_setting(SETTING_KEY)
        if not raw:
            return None
        try:
            doc = json.loads(raw)
            public = base64.b64decode(doc["public_key"], validate=True)
        except (ValueError, KeyError, TypeError):
            raise errors.LocalStateError("this home's pinned discovery key is unreadable") from None
        return discovery.DiscoveryKey(public, discovery.discovery_key_id(public))

    def _save_key(self, key: discovery.DiscoveryKey) -> None:
        doc = {"public_key": base64.b64encode(key.public_key).decode(), "key_id": key.key_id}
        with self.ctx.store.transaction():
            self.ctx.store.set_setting(SETTING_KEY, json.dumps(doc))

    def _served_key(self) -> discovery.DiscoveryKey:
        """The relay's discovery key, only if a sealed-sender key this home trusts signed it
        (the trusted keys are refreshed once, to follow an endorsed rotation)."""
        doc = self.ctx.anonymous().discovery_key()
        try:
            public = base64.b64decode(str(doc["public_key"]), validate=True)
            signature = base64.b64decode(str(doc["signature"]), validate=True)
            signed_by = str(doc["signed_by"])
        except (KeyError, ValueError):
            raise errors.SecurityError("the relay served a malformed discovery key") from None
        trusted = {relay_key_id(k).hex(): k for k in self.sealed.trusted_relay_keys()}
        if signed_by not in trusted:
            trusted = {relay_key_id(k).hex(): k for k in self.sealed.refresh_relay_keys()}
        try:
            return discovery.verify_discovery_key(public, signed_by, signature, trusted)
        except DecodeError as exc:
            raise errors.SecurityError(
                f"the relay's discovery key is not signed by a relay key this device trusts: {exc}",
                hint="a relay that changes its discovery key without signing it could link your lookups",
            ) from None

    def pin_key(self) -> discovery.DiscoveryKey:
        """At init and link (after the sealed-sender keys): pin the relay's discovery key
        now, while the relay is the one chosen. A home that has one keeps it."""
        pinned = self.pinned_key()
        if pinned is not None:
            return pinned
        key = self._served_key()
        self._save_key(key)
        return key

    def _key_for(self, key_id: str) -> discovery.DiscoveryKey:
        """The key an evaluation says it was made under: the pinned one, or a new one the
        relay serves signed by a trusted sealed-sender key (a rotation, then pinned)."""
        pinned = self.pin_key()
        if key_id == pinned.key_id:
            return pinned
        served = self._served_key()
        if served.key_id != key_id:
            raise errors.SecurityError(
                "the relay evaluated a lookup under a discovery key it does not serve signed",
                hint="a relay that evaluates lookups under keys of its own can link them",
            )
        self._save_key(served)
        return served

    # --- linking: what a new device of the account takes from an existing one ---

    def link_settings(self) -> dict[str, object]:
        """For a device being linked (inside the end-to-end encrypted welcome): the pinned
        discovery key and each handle's first prefix length, so the new device neither
        trusts the relay's word afresh nor reads a longer prefix than this one did."""
        pinned = self.pinned_key()
        bits = {
            k[len(BITS) :]: int(v) for k, v in self.ctx.store.settings().items() if k.startswith(BITS) and v.isdigit()
        }
        return {"key": base64.b64encode(pinned.public_key).decode() if pinned else "", "bits": bits}

    @staticmethod
    def settings_from_link(doc: object) -> dict[str, str]:
        """The settings a welcome's discovery part gives (malformed parts are skipped: the
        new device then pins from the relay, as at init)."""
        out: dict[str, str] = {}
        if not isinstance(doc, dict):
            return out
        key = doc.get("key")
        if isinstance(key, str) and key:
            try:
                public = base64.b64decode(key, validate=True)
            except ValueError:
                public = b""
            if len(public) == 32:
                out[SETTING_KEY] = json.dumps({"public_key": key, "key_id": discovery.discovery_key_id(public)})
        bits = doc.get("bits")
        if isinstance(bits, dict):
            for handle, b in bits.items():
                if isinstance(handle, str) and type(b) is int and 0 <= b <= discovery.MAX_PREFIX_BITS:
                    out[BITS + handle] = str(b)
        return out

    # --- lookups ---

    def lookup(self, handles: list[str]) -> list[LookupResult]:
        """Whether each handle is reachable by imsg, without the relay learning which
        handles were asked about (one VOPRF evaluation each, against the account's budget)."""
        self.ctx.account()
        canonical = [canonical_handle(h) for h in handles]  # every usage error before any request
        found = self.holders(canonical)
        out = []
        for h in canonical:
            holder = found[h]
            out.append(
                LookupResult(
                    h, holder is not None, bool(holder and holder.verified), holder.account_id if holder else ""
                )
            )
        return out

    def _evaluate(self, inputs: list[str]) -> tuple[dict[str, bytes], int]:
        """Each input's VOPRF output, every proof checked, and the relay's prefix length."""
        relay = self.ctx.relay()
        outputs: dict[str, bytes] = {}
        bits = 0
        for i in range(0, len(inputs), MAX_BATCH):
            chunk = [discovery.blind(h, self.ctx.rng) for h in inputs[i : i + MAX_BATCH]]
            answer = relay.evaluate([b.element for b in chunk])
            key = self._key_for(answer.key_id)
            try:
                found = discovery.finalize_all(chunk, answer.evaluated, key.public_key, answer.proof)
                discovery.check_prefix_bits(answer.prefix_bits)
            except DecodeError as exc:
                raise errors.SecurityError(str(exc)) from None
            outputs.update((b.handle, o) for b, o in zip(chunk, found, strict=True))
            bits = answer.prefix_bits
        return outputs, bits

    def _first_bits(self, handle: str, bits: int) -> int:
        """The prefix length to read for `handle`: never longer than its first lookup's."""
        raw = self.ctx.store.get_setting(BITS + handle)
        first = int(raw) if raw and raw.isdigit() else None
        if first is None or bits < first:
            # First lookup, or the relay's buckets grew: remember the shorter length.
            with self.ctx.store.transaction():
                self.ctx.store.set_setting(BITS + handle, str(bits))
            return bits
        return first

    def _read(self, tags: dict[str, bytes], real: set[str], bits: int) -> dict[str, list[tuple[bytes, bytes]]]:
        """Every entry of the buckets each tag falls in, read with no credential. A real
        handle first looked up with a shorter prefix reads all sub-buckets of that prefix."""
        wanted: dict[str, list[int]] = {}
        for h, tag in tags.items():
            first = self._first_bits(h, bits) if h in real else bits
            wanted[h] = discovery.sub_prefixes(discovery.prefix_of(tag, first), first, bits)
        prefixes = sorted({p for ps in wanted.values() for p in ps})
        anonymous = self.ctx.anonymous()
        buckets: dict[int, list[tuple[bytes, bytes]]] = {}
        for i in range(0, len(prefixes), MAX_BATCH):
            buckets.update(anonymous.buckets(bits, prefixes[i : i + MAX_BATCH]))
        try:
            for p in prefixes:
                discovery.check_bucket(bits, len(buckets.get(p, [])))
        except DecodeError as exc:
            raise errors.SecurityError(str(exc)) from None
        return {h: [e for p in ps for e in buckets.get(p, [])] for h, ps in wanted.items()}

    def holders(self, handles: list[str], *, cover: int = 0) -> dict[str, discovery.Holder | None]:
        """The holder of each (canonical) handle, None for one nobody registered. `cover`
        more random inputs go in the same evaluation and their buckets are read too: to the
        relay they look like any other lookup (the background re-verification pads with them)."""
        unique = list(dict.fromkeys(handles))
        covers = [COVER_PREFIX + self.ctx.rng(16).hex() for _ in range(cover)]
        inputs = unique + covers
        outputs, bits = self._evaluate(inputs)
        tags = {h: discovery.tag_of(o) for h, o in outputs.items()}
        for _ in range(2):  # once more if the relay re-sized its buckets in between
            try:
                entries = self._read(tags, set(unique), bits)
                break
            except errors.RelayRefusedError as exc:
                resized = exc.details.get("prefix_bits")
                if exc.relay_code != "prefix_bits_changed" or not isinstance(resized, int):
                    raise
                try:
                    discovery.check_prefix_bits(resized)
                except DecodeError as narrow:
                    raise errors.SecurityError(str(narrow)) from None
                bits = resized
        else:
            raise errors.RelayRefusedError(
                "the relay keeps changing its bucket size; try again", relay_code="prefix_bits_changed"
            )
        return {h: discovery.open_record(outputs[h], entries[h]) for h in unique}

    def holder(self, handle: str) -> discovery.Holder:
        """The holder of `handle`, or NotRegisteredError."""
        found = self.holders([handle])[handle]
        if found is None:
            raise errors.NotRegisteredError(f"{handle} is not registered with imsg", status=404, relay_code="not_found")
        return found

    def note_handle_verified(self, handle: str, verified: bool) -> None:
        self.ctx.store.set_setting(UNVERIFIED + handle, None if verified else "1")

    def handle_verified(self, handle: str) -> bool:
        return self.ctx.store.get_setting(UNVERIFIED + handle) is None
