"""RFC 9497 mode 0x01 (VOPRF) for ristretto255-SHA512: the server proves, with one batched
DLEQ proof (§2.2), that every element it evaluated was multiplied by the secret key of
its public key pkS. A client holding a pinned pkS thus knows the relay used that key for
every lookup, and cannot be given a fresh key per lookup to link its buckets.

    server: evaluated, proof = blind_evaluate_batch(skS, pkS, blinded, rng)
    client: outputs = finalize_batch(inputs, blinds, evaluated, blinded, pkS, proof)

A proof is c || s, two 32-byte little-endian scalars. `fixed_r` is the RFC's
ProofRandomScalar, for known-answer tests only.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence

from imsg_oprf import (
    MODE_VOPRF,
    SCALAR_BYTES,
    DeserializeError,
    InvalidInputError,
    OprfError,
    VerifyError,
    _sodium,
    add,
    blind_evaluate,
    context_string,
    deserialize_element,
    deserialize_scalar,
    finalize_hash,
    hash_to_scalar,
    hash_to_scalar_dst,
    mul,
    mul_base,
    random_scalar,
    scalar_mul,
    scalar_sub,
)

PROOF_BYTES = 2 * SCALAR_BYTES
MAX_BATCH = 2**16 - 1  # the composite transcript numbers elements with two bytes


def generator() -> bytes:
    one = (1).to_bytes(SCALAR_BYTES, "little")
    return mul_base(one)


def _lp(data: bytes) -> bytes:
    """I2OSP(len(data), 2) || data"""
    return len(data).to_bytes(2, "big") + data


def _seed(b: bytes, mode: int) -> bytes:
    return hashlib.sha512(_lp(b) + _lp(b"Seed-" + context_string(mode))).digest()


def _weights(b: bytes, c: Sequence[bytes], d: Sequence[bytes], mode: int) -> list[bytes]:
    """The d_i of ComputeComposites: each element pair's scalar, from a seed over B."""
    if not c or len(c) != len(d):
        raise OprfError("a proof needs the same non-zero number of inputs and evaluations")
    if len(c) > MAX_BATCH:
        raise OprfError(f"at most {MAX_BATCH} elements per proof")
    seed = _seed(b, mode)
    dst = hash_to_scalar_dst(mode)
    return [
        hash_to_scalar(_lp(seed) + i.to_bytes(2, "big") + _lp(ci) + _lp(di) + b"Composite", dst)
        for i, (ci, di) in enumerate(zip(c, d, strict=True))
    ]


def _sum(terms: list[bytes]) -> bytes:
    # Starting from the first term rather than the identity: libsodium has no identity
    # element to add to, and the sum of honest terms is the identity with probability ~2^-252.
    total = terms[0]
    for t in terms[1:]:
        total = add(total, t)
    return total


def compute_composites(b: bytes, c: Sequence[bytes], d: Sequence[bytes], mode: int = MODE_VOPRF) -> tuple[bytes, bytes]:
    """Client: (M, Z) = (sum d_i C_i, sum d_i D_i)."""
    weights = _weights(b, c, d, mode)
    m = _sum([mul(w, ci) for w, ci in zip(weights, c, strict=True)])
    z = _sum([mul(w, di) for w, di in zip(weights, d, strict=True)])
    return m, z


def compute_composites_fast(
    k: bytes, b: bytes, c: Sequence[bytes], d: Sequence[bytes], mode: int = MODE_VOPRF
) -> tuple[bytes, bytes]:
    """Server: (M, k * M), one scalar multiplication for Z instead of m, since it knows k."""
    weights = _weights(b, c, d, mode)
    m = _sum([mul(w, ci) for w, ci in zip(weights, c, strict=True)])
    return m, mul(k, m)


def _challenge(b: bytes, m: bytes, z: bytes, t2: bytes, t3: bytes, mode: int) -> bytes:
    transcript = _lp(b) + _lp(m) + _lp(z) + _lp(t2) + _lp(t3) + b"Challenge"
    return hash_to_scalar(transcript, hash_to_scalar_dst(mode))


def generate_proof(
    k: bytes,
    a: bytes,
    b: bytes,
    c: Sequence[bytes],
    d: Sequence[bytes],
    rng: Callable[[int], bytes],
    *,
    mode: int = MODE_VOPRF,
    fixed_r: bytes | None = None,
) -> bytes:
    """A proof that k*A == B and k*C[i] == D[i] for every i (RFC 9497 §2.2.1)."""
    m, z = compute_composites_fast(k, b, c, d, mode)
    r = deserialize_scalar(fixed_r) if fixed_r is not None else random_scalar(rng)
    t2 = mul(r, a)
    t3 = mul(r, m)
    ch = _challenge(b, m, z, t2, t3, mode)
    s = scalar_sub(r, scalar_mul(ch, k))
    return ch + s


def verify_proof(
    a: bytes, b: bytes, c: Sequence[bytes], d: Sequence[bytes], proof: bytes, *, mode: int = MODE_VOPRF
) -> bool:
    """RFC 9497 §2.2.2 VerifyProof. False for any proof that does not verify, including a
    malformed one or elements that make the arithmetic degenerate."""
    if len(proof) != PROOF_BYTES:
        return False
    try:
        ch = deserialize_scalar(proof[:SCALAR_BYTES])
        s = deserialize_scalar(proof[SCALAR_BYTES:])
        m, z = compute_composites(b, c, d, mode)
        t2 = add(mul(s, a), mul(ch, b))
        t3 = add(mul(s, m), mul(ch, z))
    except (DeserializeError, InvalidInputError):
        return False
    return hmac.compare_digest(_challenge(b, m, z, t2, t3, mode), ch)


def blind_evaluate_batch(
    sk: bytes, pk: bytes, blinded: Sequence[bytes], rng: Callable[[int], bytes], *, fixed_r: bytes | None = None
) -> tuple[list[bytes], bytes]:
    """Server: every blinded element evaluated, and ONE proof for all of them (§3.3.2,
    BlindEvaluate with lists: the RFC's batching). DeserializeError for a bad element."""
    evaluated = [blind_evaluate(sk, e) for e in blinded]
    return evaluated, generate_proof(sk, generator(), pk, blinded, evaluated, rng, fixed_r=fixed_r)


def finalize_batch(
    inputs: Sequence[bytes],
    blinds: Sequence[bytes],
    evaluated: Sequence[bytes],
    blinded: Sequence[bytes],
    pk: bytes,
    proof: bytes,
) -> list[bytes]:
    """Client: the outputs, only if the proof shows every element was evaluated under pk
    (VerifyError otherwise; DeserializeError for an element that is not one)."""
    if not (len(inputs) == len(blinds) == len(evaluated) == len(blinded)) or not inputs:
        raise VerifyError("the server answered a different number of elements than asked")
    pk = deserialize_element(pk)
    evaluated = [deserialize_element(e) for e in evaluated]
    if not verify_proof(generator(), pk, blinded, evaluated, proof):
        raise VerifyError("the server's proof does not verify under its public key")
    invert = _sodium().crypto_core_ristretto255_scalar_invert
    return [finalize_hash(x, mul(invert(r), e)) for x, r, e in zip(inputs, blinds, evaluated, strict=True)]
