"""Private discovery: the VOPRF key (signed by the sealed-sender key), RFC 9497 mode 0x01
evaluations of blinded elements with one batched proof, and discovery buckets read by tag
prefix (docs/PROTOCOL.md §8a). Nothing here is stored or logged: the relay sees a blinded
element, uniformly random to it, and a prefix shared by ~MIN_BUCKET handles.

Bucket reads carry no credential (the prefix says something about whom the reader looks
for, so it must not be joined to an account): they are counted relay-wide, in memory.
Evaluations stay credentialed: a blinded element says nothing, and the budget per account
is what bounds enumeration.
"""

from __future__ import annotations

import time
from typing import Annotated

from msgspec import Meta, Struct
from starlette.responses import Response

import imsg_oprf
from imsg_relay import schema
from imsg_relay.context import RelayContext
from imsg_relay.discovery import bucket_range, prefix_bits
from imsg_relay.errors import RelayError, bad_request
from imsg_relay.operation import Call, json_response

COUNT_CACHE_SECONDS = 30.0  # the bucket size policy follows the registry this closely
MAX_EVALUATIONS = 1000  # blinded elements per request
MAX_PREFIXES = 1000  # buckets per request

Element = Annotated[bytes, Meta(max_length=33, description="a ristretto255 element (32 bytes)")]
PrefixBits = Annotated[int, Meta(ge=0, le=16)]


class EvaluateRequest(Struct):
    elements: Annotated[list[Element], Meta(min_length=1, extra_json_schema={"maxItems": MAX_EVALUATIONS})]

    def __post_init__(self) -> None:
        schema.max_items("body.elements", self.elements, MAX_EVALUATIONS)


Hex16 = Annotated[str, Meta(pattern="^[0-9a-f]{16}$")]


class Evaluated(Struct):
    evaluated: list[Element]
    proof: Annotated[bytes, Meta(max_length=65, description="the batched DLEQ proof c || s (64 bytes)")]
    prefix_bits: PrefixBits
    key_id: Hex16


class DiscoveryKeyInfo(Struct):
    public_key: Annotated[bytes, Meta(max_length=33, description="the VOPRF public key (a ristretto255 element)")]
    key_id: Hex16
    signed_by: Hex16
    signature: Annotated[bytes, Meta(max_length=65, description="Ed25519 by the sealed-sender key `signed_by`")]


class BucketsRequest(Struct):
    prefix_bits: PrefixBits
    prefixes: Annotated[
        list[Annotated[int, Meta(ge=0, le=65535)]], Meta(min_length=1, extra_json_schema={"maxItems": MAX_PREFIXES})
    ]

    def __post_init__(self) -> None:
        schema.max_items("body.prefixes", self.prefixes, MAX_PREFIXES)


class BucketEntry(Struct):
    tag: Annotated[bytes, Meta(max_length=33)]
    record: Annotated[bytes, Meta(max_length=60)]


class Bucket(Struct):
    prefix: Annotated[int, Meta(ge=0)]
    entries: list[BucketEntry]


class Buckets(Struct):
    prefix_bits: PrefixBits
    buckets: list[Bucket]


async def _prefix_bits(relay: RelayContext) -> int:
    cache = relay.discoverable
    now = time.monotonic()
    if now - cache.at > COUNT_CACHE_SECONDS or cache.at == 0.0:
        cache.count = await relay.storage.discoverable_count()
        cache.at = now
    return prefix_bits(cache.count)


async def discovery_key(relay: RelayContext, call: Call) -> Response:
    # Signed by the key that signs sender certificates now: clients follow it only through
    # the sealed-sender keys they trust (pinned, then endorsed rotations).
    return json_response(relay.discovery_key.signed(relay.sealed_signing_keys()[-1]))


async def evaluate(relay: RelayContext, call: Call) -> Response:
    device = await relay.authenticate(call.request)
    data = await call.body(EvaluateRequest)
    elements = data.elements
    if not elements:
        raise bad_request("elements is empty")
    # One event per element, per account: the budget bounds how many handles any
    # account can test. Refused whole, before any evaluation, when over it.
    for _ in elements:
        wait = relay.limits.discovery.retry_after(device.account_id)
        if wait > 0:
            seconds = max(1, int(wait) + 1)
            raise RelayError(
                "rate_limited",
                "too many lookups for this account, slow down",
                headers={"Retry-After": str(seconds)},
                retry_after=seconds,
            )
    for i, element in enumerate(elements):
        try:
            imsg_oprf.deserialize_element(element)
        except imsg_oprf.OprfError:
            raise bad_request(f"elements[{i}] is not a valid ristretto255 element") from None
    key = relay.discovery_key
    try:
        evaluated, proof = key.evaluate_blinded(elements)
    except imsg_oprf.OprfError:  # valid elements whose product is the identity: never honest
        raise bad_request("elements cannot be evaluated") from None
    return json_response(
        {"evaluated": evaluated, "proof": proof, "prefix_bits": await _prefix_bits(relay), "key_id": key.key_id.hex()}
    )


async def buckets(relay: RelayContext, call: Call) -> Response:
    # No authentication: whoever sends a credential here is ignored, not identified.
    relay.limits.bucket_read.check("relay")
    data = await call.body(BucketsRequest)
    if not data.prefixes:
        raise bad_request("prefixes is empty")
    bits = await _prefix_bits(relay)
    if data.prefix_bits != bits:
        raise RelayError("prefix_bits_changed", f"buckets are now {bits}-bit prefixes", prefix_bits=bits)
    out = []
    for prefix in dict.fromkeys(data.prefixes):
        if prefix >> bits:
            raise bad_request(f"prefix {prefix} does not fit in {bits} bits")
        entries = await relay.storage.discovery_bucket(*bucket_range(prefix, bits))
        out.append({"prefix": prefix, "entries": [{"tag": (t), "record": (r)} for t, r in entries]})
    return json_response({"prefix_bits": bits, "buckets": out})
