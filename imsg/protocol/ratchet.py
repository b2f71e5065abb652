"""The Double Ratchet (Signal's specification, revision 4), with AES-256-GCM.

    KDF_RK(rk, dh_out) = HKDF-SHA256(ikm=dh_out, salt=rk, info=LABEL_ROOT, 64) -> (rk', ck)
    KDF_CK(ck)         = (HMAC-SHA256(ck, 0x02) -> ck', HMAC-SHA256(ck, 0x01) -> mk)
    key || nonce       = HKDF-SHA256(ikm=mk, salt=None, info=LABEL_MESSAGE_KEYS, 44)
    message            = header || AES-256-GCM(key, nonce, plaintext, AD || extra || header)

`extra` is empty except inside a prekey message, where it is the prekey prefix (see
session), so every byte of a first message is authenticated.

Header: version (1) | type 0x02 (1) | Enc(DH ratchet public key) (33) | PN (4) | N (4).

The sending chain is created lazily: receiving a new ratchet key closes our sending chain,
and the next `encrypt` draws a fresh key pair (from the `rng` it is given) and performs the
sending half of the DH ratchet. This is the same sequence of root-key steps as the spec
(a peer ratchets only after seeing our new key, so at most one sending step is ever
pending) and it keeps `decrypt` free of randomness.

`decrypt` changes nothing unless the AEAD check passes: every candidate value is computed
in locals and assigned only after authentication (SECURITY-TESTS 1, 20). Forward jumps are
bounded before any KDF work (SECURITY-TESTS 19).
"""

from __future__ import annotations

import struct

from imsg.crypto import aead, dh
from imsg.crypto.errors import AuthenticationError, CryptoError
from imsg.crypto.kdf import hkdf, hmac_sha256
from imsg.crypto.labels import LABEL_MESSAGE_KEYS, LABEL_ROOT
from imsg.protocol.consts import MAX_FORWARD_JUMPS, MAX_MESSAGE_KEYS, MAX_SKIPPED_KEY_AGE_MS, WIRE_VERSION
from imsg.protocol.encoding import KEY_X25519, Reader, Writer
from imsg.protocol.errors import (
    DecodeError,
    DecryptionError,
    DuplicateMessageError,
    LocalProtocolError,
    TooFarAheadError,
)
from imsg.protocol.identity import Rng

MSG_RATCHET = 0x02
_HEADER = struct.Struct(">BBB32sII")  # version, type, key tag, dh public, pn, n
HEADER_LEN = _HEADER.size  # 43
_CK_MSG = b"\x01"
_CK_NEXT = b"\x02"

Skipped = tuple[tuple[bytes, int], bytes]  # ((ratchet public key, n), message key)


def kdf_rk(rk: bytes, dh_out: bytes) -> tuple[bytes, bytes]:
    out = hkdf(dh_out, salt=rk, info=LABEL_ROOT, length=64)
    return out[:32], out[32:]


def _message_key(mk: bytes) -> tuple[bytes, bytes]:
    out = hkdf(mk, salt=None, info=LABEL_MESSAGE_KEYS, length=44)
    return out[:32], out[32:]


def parse_header(message: bytes) -> tuple[bytes, int, int]:
    """Return (dh public, pn, n) of a ratchet message, or raise DecodeError."""
    if len(message) < HEADER_LEN + aead.TAG_LEN:
        raise DecodeError("ratchet message too short")
    version, mtype, tag, dh_pub, pn, n = _HEADER.unpack_from(message)
    if version != WIRE_VERSION or mtype != MSG_RATCHET or tag != KEY_X25519:
        raise DecodeError("not a version 1 ratchet message")
    return dh_pub, pn, n


class RatchetState:
    """One Double Ratchet session between two devices. `ad_send`/`ad_recv` are the
    associated-data prefixes binding both devices' addresses and identity keys, in the
    order sender-then-recipient, so our own message reflected back fails (SECURITY-TESTS 12)."""

    __slots__ = (
        "root_key",
        "dhs_private",
        "dhs_public",
        "dhr",
        "cks",
        "ns",
        "pn",
        "ckr",
        "nr",
        "skipped",
        "ad_send",
        "ad_recv",
    )

    def __init__(
        self,
        *,
        root_key: bytes,
        ad_send: bytes,
        ad_recv: bytes,
        dhs_private: bytes | None = None,
        dhs_public: bytes | None = None,
        dhr: bytes | None = None,
        cks: bytes | None = None,
        ns: int = 0,
        pn: int = 0,
        ckr: bytes | None = None,
        nr: int = 0,
        skipped: dict[tuple[bytes, int], tuple[bytes, int]] | None = None,
    ):
        self.root_key = root_key
        self.dhs_private = dhs_private
        self.dhs_public = dhs_public
        self.dhr = dhr
        self.cks = cks
        self.ns = ns
        self.pn = pn
        self.ckr = ckr
        self.nr = nr
        # (ratchet public key, n) -> (message key, time stored); insertion-ordered, oldest first
        self.skipped = skipped if skipped is not None else {}
        self.ad_send = ad_send
        self.ad_recv = ad_recv

    # --- set-up ---

    @classmethod
    def initiator(cls, sk: bytes, remote_ratchet_key: bytes, ad_send: bytes, ad_recv: bytes) -> RatchetState:
        """Alice: she knows Bob's signed prekey, which is his first ratchet key."""
        return cls(root_key=sk, dhr=remote_ratchet_key, ad_send=ad_send, ad_recv=ad_recv)

    @classmethod
    def responder(cls, sk: bytes, signed_prekey: dh.KeyPair, ad_send: bytes, ad_recv: bytes) -> RatchetState:
        """Bob: his signed prekey is his first ratchet key; he sends after he receives."""
        return cls(
            root_key=sk,
            dhs_private=signed_prekey.private,
            dhs_public=signed_prekey.public,
            ad_send=ad_send,
            ad_recv=ad_recv,
        )

    # --- sending ---

    def encrypt(self, plaintext: bytes, rng: Rng, extra_ad: bytes = b"") -> bytes:
        if self.cks is None:
            if self.dhr is None:
                raise LocalProtocolError("cannot send before the peer's first message")
            pair = dh.KeyPair(rng(32))
            self.root_key, self.cks = kdf_rk(self.root_key, pair.exchange(self.dhr))
            self.dhs_private, self.dhs_public = pair.private, pair.public
            self.pn, self.ns = self.ns, 0
        ck = self.cks
        mk = hmac_sha256(ck, _CK_MSG)
        self.cks = hmac_sha256(ck, _CK_NEXT)
        header = _HEADER.pack(WIRE_VERSION, MSG_RATCHET, KEY_X25519, self.dhs_public, self.pn, self.ns)
        self.ns += 1
        key, nonce = _message_key(mk)
        return header + aead.seal(key, nonce, plaintext, self.ad_send + extra_ad + header)

    @property
    def sending_position(self) -> tuple[bytes | None, int]:
        """(ratchet public key, n) the next message would use, for nonce-reuse audits."""
        return self.dhs_public, self.ns

    # --- receiving ---

    def decrypt(self, message: bytes, now: int, extra_ad: bytes = b"") -> bytes:
        dh_pub, pn, n = parse_header(message)
        header, body = message[:HEADER_LEN], message[HEADER_LEN:]
        ad = self.ad_recv + extra_ad + header

        slot = (dh_pub, n)
        held = self.skipped.get(slot)
        if held is not None:
            mk, stored = held
            if now - stored > MAX_SKIPPED_KEY_AGE_MS:
                raise DuplicateMessageError("message key expired")
            plaintext = _open(mk, body, ad)
            del self.skipped[slot]
            return plaintext

        if dh_pub == self.dhr and self.ckr is not None:
            if n < self.nr:
                raise DuplicateMessageError()
            if n - self.nr > MAX_FORWARD_JUMPS:
                raise TooFarAheadError()
            new_skipped, ck, mk = _advance(self.ckr, self.nr, n, dh_pub)
            plaintext = _open(mk, body, ad)
            self.ckr, self.nr = ck, n + 1
            self._store_skipped(new_skipped, now)
            return plaintext

        # A new ratchet key from the peer: the receiving half of a DH ratchet step.
        if dh_pub == self.dhs_public or self.dhs_private is None:
            raise DecryptionError()
        if n > MAX_FORWARD_JUMPS or (self.ckr is not None and pn - self.nr > MAX_FORWARD_JUMPS):
            raise TooFarAheadError()
        old_skipped: list[Skipped] = []
        if self.ckr is not None and self.dhr is not None and pn > self.nr:  # a receiving chain has its dhr
            old_skipped, _ = _skip(self.ckr, self.nr, pn, self.dhr)
        try:
            dh_out = dh.exchange(self.dhs_private, dh_pub)
        except CryptoError:
            raise DecryptionError() from None
        root_key, ckr = kdf_rk(self.root_key, dh_out)
        new_skipped, ck, mk = _advance(ckr, 0, n, dh_pub)
        plaintext = _open(mk, body, ad)
        # Authenticated: commit the step. Our sending chain closes; the next send opens one.
        self.root_key = root_key
        self.dhr, self.ckr, self.nr = dh_pub, ck, n + 1
        self.cks = None
        self._store_skipped(old_skipped + new_skipped, now)
        return plaintext

    def _store_skipped(self, keys: list[Skipped], now: int) -> None:
        if not keys and not self.skipped:
            return
        skipped = self.skipped
        for slot, mk in keys:
            skipped[slot] = (mk, now)
        # Drop expired keys (oldest first), then enforce the cap.
        cutoff = now - MAX_SKIPPED_KEY_AGE_MS
        for slot in list(skipped):
            if skipped[slot][1] >= cutoff:
                break
            del skipped[slot]
        while len(skipped) > MAX_MESSAGE_KEYS:
            del skipped[next(iter(skipped))]

    # --- persistence ---

    def encode(self) -> bytes:
        w = Writer().u8(WIRE_VERSION).raw(self.root_key)
        w.opt(self.dhs_private).opt(self.dhs_public).opt(self.dhr)
        w.opt(self.cks).u32(self.ns).u32(self.pn).opt(self.ckr).u32(self.nr)
        w.u32(len(self.skipped))
        for (pub, n), (mk, stored) in self.skipped.items():
            w.raw(pub).u32(n).raw(mk).u64(stored)
        w.var(self.ad_send).var(self.ad_recv)
        return w.bytes()

    @classmethod
    def decode(cls, data: bytes) -> RatchetState:
        r = Reader(data)
        if r.u8() != WIRE_VERSION:
            raise DecodeError("unsupported ratchet state version")
        root_key = r.raw(32)
        dhs_private, dhs_public, dhr = r.opt(32), r.opt(32), r.opt(32)
        cks, ns, pn, ckr, nr = r.opt(32), r.u32(), r.u32(), r.opt(32), r.u32()
        count = r.u32()
        if count > MAX_MESSAGE_KEYS:
            raise DecodeError("too many skipped keys in stored state")
        skipped = {}
        for _ in range(count):
            pub, n, mk, stored = r.raw(32), r.u32(), r.raw(32), r.u64()
            skipped[(pub, n)] = (mk, stored)
        ad_send, ad_recv = r.var(4096), r.var(4096)
        r.end()
        return cls(
            root_key=root_key,
            ad_send=ad_send,
            ad_recv=ad_recv,
            dhs_private=dhs_private,
            dhs_public=dhs_public,
            dhr=dhr,
            cks=cks,
            ns=ns,
            pn=pn,
            ckr=ckr,
            nr=nr,
            skipped=skipped,
        )


def _skip(ck: bytes, start: int, until: int, dh_pub: bytes) -> tuple[list[Skipped], bytes]:
    """Step a receiving chain from index `start` to `until`: the message keys of the skipped
    indices [start, until), and the chain key at `until`."""
    skipped = []
    for i in range(start, until):
        skipped.append(((dh_pub, i), hmac_sha256(ck, _CK_MSG)))
        ck = hmac_sha256(ck, _CK_NEXT)
    return skipped, ck


def _advance(ck: bytes, start: int, until: int, dh_pub: bytes) -> tuple[list[Skipped], bytes, bytes]:
    """`_skip` to `until`, then take its message: the skipped keys, the chain key after
    `until`, and the message key for `until`."""
    skipped, ck = _skip(ck, start, until, dh_pub)
    return skipped, hmac_sha256(ck, _CK_NEXT), hmac_sha256(ck, _CK_MSG)


def _open(mk: bytes, body: bytes, ad: bytes) -> bytes:
    key, nonce = _message_key(mk)
    try:
        return aead.open_(key, nonce, body, ad)
    except AuthenticationError:
        raise DecryptionError() from None
