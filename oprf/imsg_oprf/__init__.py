"""RFC 9497 OPRF, suite ristretto255-SHA512, modes 0x00 (OPRF) and 0x01 (VOPRF), on
libsodium's ristretto255.

Shared by the client (Blind, Finalize) and the relay (DeriveKeyPair, BlindEvaluate,
Evaluate), so both sides run the one implementation that the RFC's Appendix A.1.1 and
A.1.2 vectors check (tests/unit/test_kat_oprf.py, test_kat_voprf.py). This module is the
group and the steps both modes share; `imsg_oprf.voprf` adds the DLEQ proofs of mode 0x01.
Every function that hashes takes the `mode`, because the RFC domain-separates each mode's
hashes by its context string: an output computed in one mode never equals another's. The group arithmetic is libsodium's, through pysodium
(ctypes over the system libsodium >= 1.0.18); this module writes only the RFC's protocol
steps: expand_message_xmd (RFC 9380 §5.3.1) with SHA-512, HashToGroup / HashToScalar with
their DSTs, and the Finalize hash.

Names follow the RFC: `blind` is the scalar r, `blinded_element` = r * HashToGroup(input),
`evaluated_element` = skS * blinded_element, output = Finalize(...).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Protocol, cast

IDENTIFIER = b"ristretto255-SHA512"
MODE_OPRF = 0x00
MODE_VOPRF = 0x01
MODES = (MODE_OPRF, MODE_VOPRF)  # mode 0x02 (POPRF) is not implemented


def context_string(mode: int) -> bytes:
    """RFC 9497 §3.1 CreateContextString(mode, identifier)."""
    if mode not in MODES:
        raise ValueError(f"unsupported OPRF mode {mode:#04x}")
    return b"OPRFV1-" + bytes([mode]) + b"-" + IDENTIFIER


CONTEXT_STRING = context_string(MODE_OPRF)
HASH_TO_GROUP_DST = b"HashToGroup-" + CONTEXT_STRING
HASH_TO_SCALAR_DST = b"HashToScalar-" + CONTEXT_STRING
DERIVE_KEY_PAIR_DST = b"DeriveKeyPair" + CONTEXT_STRING
FINALIZE_LABEL = b"Finalize"


def hash_to_group_dst(mode: int) -> bytes:
    return b"HashToGroup-" + context_string(mode)


def hash_to_scalar_dst(mode: int) -> bytes:
    return b"HashToScalar-" + context_string(mode)


def derive_key_pair_dst(mode: int) -> bytes:
    return b"DeriveKeyPair" + context_string(mode)


ELEMENT_BYTES = 32  # Ne
SCALAR_BYTES = 32  # Ns
OUTPUT_BYTES = 64  # Nh
MAX_INPUT = 2**16 - 1  # inputs are length-prefixed with two bytes


class OprfError(Exception):
    """the OPRF could not be computed"""


class InvalidInputError(OprfError):
    """the input maps to the identity element (RFC 9497 InvalidInputError)"""


class DeserializeError(OprfError):
    """not the canonical encoding of a non-identity ristretto255 element"""


class VerifyError(OprfError):
    """the server's proof does not verify (RFC 9497 VerifyError): not evaluated under the
    public key, or not for these elements"""


class LibsodiumMissing(OprfError):
    """libsodium (>= 1.0.18, with ristretto255) is not installed"""


class _Ristretto255(Protocol):
    """The part of pysodium (untyped: ctypes over libsodium) that this module calls."""

    def crypto_core_ristretto255_from_hash(self, r: bytes, /) -> bytes: ...
    def crypto_core_ristretto255_add(self, p: bytes, q: bytes, /) -> bytes: ...
    def crypto_core_ristretto255_scalar_mul(self, x: bytes, y: bytes, /) -> bytes: ...
    def crypto_core_ristretto255_scalar_sub(self, x: bytes, y: bytes, /) -> bytes: ...
    def crypto_core_ristretto255_is_valid_point(self, p: bytes, /) -> bool: ...
    def crypto_core_ristretto255_scalar_reduce(self, s: bytes, /) -> bytes: ...
    def crypto_core_ristretto255_scalar_invert(self, s: bytes, /) -> bytes: ...
    def crypto_scalarmult_ristretto255(self, n: bytes, p: bytes, /) -> bytes: ...
    def crypto_scalarmult_ristretto255_base(self, n: bytes, /) -> bytes: ...


def _sodium() -> _Ristretto255:
    """pysodium, loaded on first use: it binds the system libsodium with ctypes."""
    try:
        import pysodium

        pysodium.crypto_core_ristretto255_from_hash  # noqa: B018 - present since libsodium 1.0.18
    except (ImportError, OSError, AttributeError, TypeError) as exc:
        raise LibsodiumMissing(
            "libsodium >= 1.0.18 is needed for private contact discovery (ristretto255); "
            "install it, e.g. `apt-get install libsodium23` or `brew install libsodium` "
            f"({type(exc).__name__}: {exc})"
        ) from None
    return cast(_Ristretto255, pysodium)


def require_libsodium() -> None:
    """Raise LibsodiumMissing now rather than at the first lookup."""
    _sodium()


# --- RFC 9380 §5.3.1 expand_message_xmd, with SHA-512 (b_in_bytes 64, s_in_bytes 128) ---


def expand_message_xmd(msg: bytes, dst: bytes, length: int) -> bytes:
    if len(dst) > 255:
        raise OprfError("DST longer than 255 bytes")
    ell = -(-length // 64)
    if ell > 255 or length > 65535:
        raise OprfError("expand_message_xmd: requested length too large")
    dst_prime = dst + bytes([len(dst)])
    msg_prime = bytes(128) + msg + length.to_bytes(2, "big") + b"\x00" + dst_prime
    b0 = hashlib.sha512(msg_prime).digest()
    b = [hashlib.sha512(b0 + b"\x01" + dst_prime).digest()]
    for i in range(2, ell + 1):
        b.append(hashlib.sha512(bytes(x ^ y for x, y in zip(b0, b[-1], strict=True)) + bytes([i]) + dst_prime).digest())
    return b"".join(b)[:length]


# --- the group (RFC 9497 §4.1: ristretto255, RFC 9496) ---


def hash_to_group(msg: bytes, mode: int = MODE_OPRF) -> bytes:
    """RFC 9496 §4.3.4 one-way map of 64 uniform bytes (libsodium's from_hash)."""
    return _sodium().crypto_core_ristretto255_from_hash(expand_message_xmd(msg, hash_to_group_dst(mode), 64))


def hash_to_scalar(msg: bytes, dst: bytes = HASH_TO_SCALAR_DST) -> bytes:
    return _sodium().crypto_core_ristretto255_scalar_reduce(expand_message_xmd(msg, dst, 64))


def _is_zero(b: bytes) -> bool:
    return hmac.compare_digest(b, bytes(len(b)))


def deserialize_element(data: bytes) -> bytes:
    """DeserializeElement: canonical encodings only, and never the identity."""
    if len(data) != ELEMENT_BYTES or _is_zero(data) or not _sodium().crypto_core_ristretto255_is_valid_point(data):
        raise DeserializeError("not a valid ristretto255 element")
    return bytes(data)


def deserialize_scalar(data: bytes) -> bytes:
    """A canonical scalar (< the group order), not zero."""
    if len(data) != SCALAR_BYTES or _is_zero(data):
        raise DeserializeError("not a valid ristretto255 scalar")
    # Canonical: reducing its 64-byte zero extension gives it back.
    if _sodium().crypto_core_ristretto255_scalar_reduce(data + bytes(32)) != data:
        raise DeserializeError("scalar is not reduced")
    return bytes(data)


def _mul(scalar: bytes, element: bytes) -> bytes:
    try:
        return _sodium().crypto_scalarmult_ristretto255(scalar, element)
    except ValueError:  # libsodium refuses a product that is the identity
        raise InvalidInputError("the product is the identity element") from None


def mul(scalar: bytes, element: bytes) -> bytes:
    """scalar * element (InvalidInputError when the product is the identity)."""
    return _mul(scalar, element)


def mul_base(scalar: bytes) -> bytes:
    """scalar * the group's generator."""
    try:
        return _sodium().crypto_scalarmult_ristretto255_base(scalar)
    except ValueError:
        raise InvalidInputError("the product is the identity element") from None


def add(p: bytes, q: bytes) -> bytes:
    try:
        return _sodium().crypto_core_ristretto255_add(p, q)
    except ValueError:
        raise InvalidInputError("not valid ristretto255 elements") from None


def scalar_mul(x: bytes, y: bytes) -> bytes:
    return _sodium().crypto_core_ristretto255_scalar_mul(x, y)


def scalar_sub(x: bytes, y: bytes) -> bytes:
    return _sodium().crypto_core_ristretto255_scalar_sub(x, y)


# --- RFC 9497 §3.2.1 DeriveKeyPair ---


def derive_key_pair(seed: bytes, info: bytes, mode: int = MODE_OPRF) -> tuple[bytes, bytes]:
    """(skS, pkS) from a 32-byte seed and public key info; the same seed gives a different
    key in each mode (the DST carries the mode's context string)."""
    if len(seed) != 32 or len(info) > MAX_INPUT:
        raise OprfError("DeriveKeyPair needs a 32-byte seed and info under 65536 bytes")
    derive_input = seed + len(info).to_bytes(2, "big") + info
    for counter in range(256):
        sk = hash_to_scalar(derive_input + bytes([counter]), derive_key_pair_dst(mode))
        if not _is_zero(sk):
            return sk, _sodium().crypto_scalarmult_ristretto255_base(sk)
    raise OprfError("DeriveKeyPair found no key")  # RFC: DeriveKeyPairError (probability ~2^-256 per try)


# --- RFC 9497 §3.3.1 the OPRF protocol ---


def random_scalar(rng: Callable[[int], bytes]) -> bytes:
    """RandomScalar: 64 random bytes reduced mod the order (bias 2^-260), never zero."""
    while True:
        s = _sodium().crypto_core_ristretto255_scalar_reduce(rng(64))
        if not _is_zero(s):
            return s


def blind(
    input: bytes, rng: Callable[[int], bytes], *, fixed_blind: bytes | None = None, mode: int = MODE_OPRF
) -> tuple[bytes, bytes]:
    """Client: (blind, blindedElement). `fixed_blind` is for known-answer tests only."""
    if len(input) > MAX_INPUT:
        raise OprfError("input longer than 65535 bytes")
    r = deserialize_scalar(fixed_blind) if fixed_blind is not None else random_scalar(rng)
    input_element = hash_to_group(input, mode)
    if _is_zero(input_element):
        raise InvalidInputError()
    return r, _mul(r, input_element)


def blind_evaluate(sk: bytes, blinded_element: bytes) -> bytes:
    """Server: evaluatedElement = skS * blindedElement (the element is checked first)."""
    return _mul(sk, deserialize_element(blinded_element))


def finalize_hash(input: bytes, unblinded_element: bytes) -> bytes:
    return hashlib.sha512(
        len(input).to_bytes(2, "big")
        + input
        + len(unblinded_element).to_bytes(2, "big")
        + unblinded_element
        + FINALIZE_LABEL
    ).digest()


def finalize(input: bytes, blind: bytes, evaluated_element: bytes) -> bytes:
    """Client, mode 0x00: the 64-byte PRF output from the server's evaluation. (Mode 0x01
    checks the server's proof first: imsg_oprf.voprf.finalize_batch.)"""
    element = deserialize_element(evaluated_element)
    unblinded = _mul(_sodium().crypto_core_ristretto255_scalar_invert(blind), element)
    return finalize_hash(input, unblinded)


def evaluate(sk: bytes, input: bytes, mode: int = MODE_OPRF) -> bytes:
    """Server: the same PRF output computed directly from the input (RFC 9497 §3.3.1
    Evaluate), as the relay does for a handle it has just verified."""
    if len(input) > MAX_INPUT:
        raise OprfError("input longer than 65535 bytes")
    input_element = hash_to_group(input, mode)
    if _is_zero(input_element):
        raise InvalidInputError()
    return finalize_hash(input, _mul(sk, input_element))
