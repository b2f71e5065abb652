"""The Double Ratchet (Signal's specification, revision 4), with AES-256-GCM.

    KDF_RK(rk, dh_out) = HKDF-SHA256(ikm=dh_out, salt=rk, info=LABEL_ROOT, 64) -> (rk', ck)
    KDF_CK(ck)         = (HMAC-SHA256(ck, 0x02) -> ck', HMAC-SHA256(ck, 0x01) -> mk)
    key || nonce       = HKDF-SHA256(ikm=mk, salt=None, info=LABEL_MESSAGE_KEYS, 44)
    message            = header || AES-256-GCM(key, nonce, plaintext, AD || extra || header)

`extra` is empty except inside a prekey message, where it is the prekey prefix (see
session), so every byte of a first message is authenticated.

Header: version (1) | type (1) | Enc(DH ratchet public key) (33) | PN (4) | N (4), then for
type 0x04 (the PQ ratchet, docs/PROTOCOL.md §5a) a flags byte and the KEM parts it names:

    flags (1) | [bit 0: recipient KEM key id (4) | ML-KEM-768 ciphertext (1088)]
              | [bit 1: sender KEM key id (4) | ML-KEM-768 public key (1184)]

A sending chain that opens with a PQ step mixes the KEM shared secret into the root key with
the DH output:

    KDF_RK_PQ(rk, dh_out, ss) = HKDF-SHA256(ikm = dh_out || ss, salt = rk,
                                            info = LABEL_ROOT_PQ || SHA-256(PK_R || CT), 64)

and every message of that chain repeats the same KEM parts (a receiver may see any of
them first). Type 0x02 is the classical form, kept for sessions whose peer has not yet
sent a 0x04 message; once it has, 0x02 is refused (no silent downgrade).

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

import hashlib
import struct

from imsg.crypto import aead, dh, kem
from imsg.crypto.errors import AuthenticationError, CryptoError
from imsg.crypto.kdf import hkdf, hmac_sha256
from imsg.crypto.labels import LABEL_MESSAGE_KEYS, LABEL_ROOT, LABEL_ROOT_PQ
from imsg.protocol.consts import (
    MAX_FORWARD_JUMPS,
    MAX_MESSAGE_KEYS,
    MAX_SKIPPED_KEY_AGE_MS,
    PQ_STEP_MAX_MS,
    PQ_STEP_MESSAGES,
    WIRE_VERSION,
)
from imsg.protocol.encoding import KEY_X25519, Reader, Writer
from imsg.protocol.errors import (
    DecodeError,
    DecryptionError,
    DowngradeError,
    DuplicateMessageError,
    LocalProtocolError,
    TooFarAheadError,
)
from imsg.protocol.identity import Rng

MSG_RATCHET = 0x02  # classical: no KEM parts
MSG_RATCHET_PQ = 0x04  # with the flags byte and the KEM parts it names
_HEADER = struct.Struct(">BBB32sII")  # version, type, key tag, dh public, pn, n
HEADER_LEN = _HEADER.size  # 43
PQ_CT = 0x01  # flags: a ciphertext to the recipient's announced KEM key
PQ_PK = 0x02  # flags: the sender's new KEM public key
_PQ_CT_LEN = PQ_CT_PART_LEN = 4 + kem.CIPHERTEXT_LEN  # key id, ciphertext
_PQ_PK_LEN = PQ_PK_PART_LEN = 4 + kem.PUBLIC_KEY_LEN  # key id, public key
_STATE_V1 = 1  # classical state (before the PQ ratchet): still decoded
_STATE_V2 = 2
_CK_MSG = b"\x01"
_CK_NEXT = b"\x02"

Skipped = tuple[tuple[bytes, int], bytes]  # ((ratchet public key, n), message key)


def kdf_rk(rk: bytes, dh_out: bytes) -> tuple[bytes, bytes]:
    out = hkdf(dh_out, salt=rk, info=LABEL_ROOT, length=64)
    return out[:32], out[32:]


def kdf_rk_pq(rk: bytes, dh_out: bytes, ss: bytes, recipient_kem_public: bytes, ct: bytes) -> tuple[bytes, bytes]:
    """The root step of a PQ step: DH and KEM secrets in one HKDF, bound to the KEM key
    and ciphertext (as PQXDH binds its own, so a re-encapsulated ciphertext cannot give the
    same root)."""
    transcript = hashlib.sha256(recipient_kem_public + ct).digest()
    out = hkdf(dh_out + ss, salt=rk, info=LABEL_ROOT_PQ + transcript, length=64)
    return out[:32], out[32:]


class PqParts:
    """The KEM parts of a 0x04 header: a ciphertext to the recipient's KEM key `ct_key_id`
    and/or the sender's new KEM public key `pk_id`."""

    __slots__ = ("ct_key_id", "ct", "pk_id", "pk")

    def __init__(self, ct_key_id: int = 0, ct: bytes | None = None, pk_id: int = 0, pk: bytes | None = None):
        self.ct_key_id, self.ct, self.pk_id, self.pk = ct_key_id, ct, pk_id, pk

    def encode(self) -> bytes:
        flags = (PQ_CT if self.ct is not None else 0) | (PQ_PK if self.pk is not None else 0)
        out = bytes((flags,))
        if self.ct is not None:
            out += struct.pack(">I", self.ct_key_id) + self.ct
        if self.pk is not None:
            out += struct.pack(">I", self.pk_id) + self.pk
        return out


_NO_PQ = PqParts()


def parse_header(message: bytes) -> tuple[bytes, int, int]:
    """Return (dh public, pn, n) of a ratchet message, or raise DecodeError."""
    _, dh_pub, pn, n, _, _ = read_header(message)
    return dh_pub, pn, n


def read_header(message: bytes) -> tuple[int, bytes, int, int, PqParts | None, int]:
    """Return (type, dh public, pn, n, KEM parts or None for 0x02, header length) of a
    ratchet message, or raise DecodeError (version, type, key tag) or DecryptionError."""
    if len(message) < HEADER_LEN + aead.TAG_LEN:
        raise DecodeError("ratchet message too short")
    version, mtype, tag, dh_pub, pn, n = _HEADER.unpack_from(message)
    if version != WIRE_VERSION or mtype not in (MSG_RATCHET, MSG_RATCHET_PQ) or tag != KEY_X25519:
        raise DecodeError("not a version 1 ratchet message")
    if mtype == MSG_RATCHET:
        return mtype, dh_pub, pn, n, None, HEADER_LEN
    # The flags byte and the KEM parts are covered by the AEAD like the rest of the header:
    # a bad one is a failed authentication (uniform DecryptionError), not a format error.
    if len(message) < HEADER_LEN + 1 + aead.TAG_LEN:
        raise DecryptionError()
    flags = message[HEADER_LEN]
    if flags & ~(PQ_CT | PQ_PK):
        raise DecryptionError()
    at = HEADER_LEN + 1
    need = at + (_PQ_CT_LEN if flags & PQ_CT else 0) + (_PQ_PK_LEN if flags & PQ_PK else 0)
    if len(message) < need + aead.TAG_LEN:
        raise DecryptionError()
    parts = PqParts()
    if flags & PQ_CT:
        parts.ct_key_id = struct.unpack_from(">I", message, at)[0]
        parts.ct = message[at + 4 : at + _PQ_CT_LEN]
        at += _PQ_CT_LEN
    if flags & PQ_PK:
        parts.pk_id = struct.unpack_from(">I", message, at)[0]
        parts.pk = message[at + 4 : at + _PQ_PK_LEN]
        at += _PQ_PK_LEN
    return mtype, dh_pub, pn, n, parts, at


def _message_key(mk: bytes) -> tuple[bytes, bytes]:
    out = hkdf(mk, salt=None, info=LABEL_MESSAGE_KEYS, length=44)
    return out[:32], out[32:]


class RatchetState:
    """One Double Ratchet session between two devices. `ad_send`/`ad_recv` are the
    associated-data prefixes binding both devices' addresses and identity keys, in the
    order sender-then-recipient, so our own message reflected back fails (SECURITY-TESTS 12).

    The PQ ratchet (docs/PROTOCOL.md §5a) adds: `kem_own` (our announced KEM key, id and
    seed, until the peer encapsulates to it), `kem_remote` (the peer's announced KEM key
    we have not yet encapsulated to), `pq_send` (the KEM parts repeated on every message
    of our current sending chain), `pq_count`/`pq_last` (messages sent and time since our
    last PQ step), `pq` (we send 0x04) and `peer_pq` (the peer has sent 0x04: 0x02 is
    refused from now on)."""

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
        "pq",
        "peer_pq",
        "kem_own",
        "kem_remote",
        "kem_next_id",
        "pq_send",
        "pq_count",
        "pq_last",
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
        pq: bool = True,
        peer_pq: bool = False,
        kem_own: tuple[int, bytes] | None = None,
        kem_remote: tuple[int, bytes] | None = None,
        kem_next_id: int = 1,
        pq_send: bytes = b"\x00",
        pq_count: int = 0,
        pq_last: int = 0,
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
        self.pq = pq
        self.peer_pq = peer_pq
        self.kem_own = kem_own  # (id, 64-byte seed)
        self.kem_remote = kem_remote  # (id, 1184-byte public key)
        self.kem_next_id = kem_next_id
        self.pq_send = pq_send  # encoded PqParts of the current sending chain
        self.pq_count = pq_count
        self.pq_last = pq_last

    # --- set-up ---

    @classmethod
    def initiator(
        cls, sk: bytes, remote_ratchet_key: bytes, ad_send: bytes, ad_recv: bytes, *, pq: bool = True
    ) -> RatchetState:
        """Alice: she knows Bob's signed prekey, which is his first ratchet key. `pq=False`
        makes a classical (0x02) sender, only for vectors and compatibility tests."""
        return cls(root_key=sk, dhr=remote_ratchet_key, ad_send=ad_send, ad_recv=ad_recv, pq=pq)

    @classmethod
    def responder(
        cls, sk: bytes, signed_prekey: dh.KeyPair, ad_send: bytes, ad_recv: bytes, *, pq: bool = True
    ) -> RatchetState:
        """Bob: his signed prekey is his first ratchet key; he sends after he receives."""
        return cls(
            root_key=sk,
            dhs_private=signed_prekey.private,
            dhs_public=signed_prekey.public,
            ad_send=ad_send,
            ad_recv=ad_recv,
            pq=pq,
        )

    # --- sending ---

    def _pq_due(self, now: int | None) -> bool:
        if self.pq_count >= PQ_STEP_MESSAGES:
            return True
        return now is not None and now - self.pq_last >= PQ_STEP_MAX_MS

    def _open_sending_chain(self, rng: Rng, now: int | None) -> None:
        """The sending half of the DH ratchet, with a PQ step when one is due."""
        assert self.dhr is not None
        pair = dh.KeyPair(rng(32))
        dh_out = pair.exchange(self.dhr)
        parts = _NO_PQ
        if self.pq and self.kem_remote is not None and self._pq_due(now):
            # PQ step: encapsulate to the peer's announced key, announce our next one.
            remote_id, remote_pk = self.kem_remote
            ss, ct = kem.encapsulate(remote_pk)
            seed = rng(kem.SEED_LEN)
            parts = PqParts(remote_id, ct, self.kem_next_id, kem.KemKeyPair(seed).public)
            self.root_key, self.cks = kdf_rk_pq(self.root_key, dh_out, ss, remote_pk, ct)
            self.kem_remote, self.kem_own = None, (self.kem_next_id, seed)
            self.kem_next_id += 1
            self.pq_count, self.pq_last = 0, now if now is not None else self.pq_last
        else:
            if self.pq and self.kem_own is None and self.kem_remote is None and self.dhs_public is not None:
                # Nobody holds a KEM key of the other (a new session, or one made before the
                # PQ ratchet): announce ours so that the peer can take the next PQ step. Not
                # on the initiator's first chain (no DH key sent yet): it travels in prekey
                # messages, which carry PQXDH's KEM ciphertext already, so the responder
                # announces on its first reply and no message kind carries more than 2,280
                # extra bytes (the sealed bucket's headroom, §6e).
                seed = rng(kem.SEED_LEN)
                parts = PqParts(pk_id=self.kem_next_id, pk=kem.KemKeyPair(seed).public)
                self.kem_own = (self.kem_next_id, seed)
                self.kem_next_id += 1
            self.root_key, self.cks = kdf_rk(self.root_key, dh_out)
        self.pq_send = parts.encode()
        self.dhs_private, self.dhs_public = pair.private, pair.public
        self.pn, self.ns = self.ns, 0

    def encrypt(self, plaintext: bytes, rng: Rng, extra_ad: bytes = b"", now: int | None = None) -> bytes:
        """`now` (ms) drives the time half of the PQ schedule; without it only the message
        count does."""
        if self.pq_last == 0 and now is not None:
            self.pq_last = now  # the session's start counts as a PQ step (PQXDH's KEM)
        if self.cks is None:
            if self.dhr is None:
                raise LocalProtocolError("cannot send before the peer's first message")
            self._open_sending_chain(rng, now)
        ck = self.cks
        assert ck is not None
        mk = hmac_sha256(ck, _CK_MSG)
        self.cks = hmac_sha256(ck, _CK_NEXT)
        mtype = MSG_RATCHET_PQ if self.pq else MSG_RATCHET
        header = _HEADER.pack(WIRE_VERSION, mtype, KEY_X25519, self.dhs_public, self.pn, self.ns)
        if self.pq:
            header += self.pq_send
        self.ns += 1
        self.pq_count += 1
        key, nonce = _message_key(mk)
        return header + aead.seal(key, nonce, plaintext, self.ad_send + extra_ad + header)

    @property
    def sending_position(self) -> tuple[bytes | None, int]:
        """(ratchet public key, n) the next message would use, for nonce-reuse audits."""
        return self.dhs_public, self.ns

    # --- receiving ---

    def decrypt(self, message: bytes, now: int, extra_ad: bytes = b"") -> bytes:
        _, dh_pub, pn, n, parts, header_len = read_header(message)
        header, body = message[:header_len], message[header_len:]
        ad = self.ad_recv + extra_ad + header

        slot = (dh_pub, n)
        held = self.skipped.get(slot)
        if held is not None:
            # A key derived from an authenticated chain: its header (type included) is in
            # the AD, so a 0x04 message rewritten as 0x02 still fails here.
            mk, stored = held
            if now - stored > MAX_SKIPPED_KEY_AGE_MS:
                raise DuplicateMessageError("message key expired")
            plaintext = _open(mk, body, ad)
            del self.skipped[slot]
            self.peer_pq = self.peer_pq or parts is not None
            return plaintext

        if parts is None and self.peer_pq:
            raise DowngradeError()

        if dh_pub == self.dhr and self.ckr is not None:
            if n < self.nr:
                raise DuplicateMessageError()
            if n - self.nr > MAX_FORWARD_JUMPS:
                raise TooFarAheadError()
            # The chain's KEM parts were used when it opened; later copies are only
            # authenticated (they are in the AD).
            new_skipped, ck, mk = _advance(self.ckr, self.nr, n, dh_pub)
            plaintext = _open(mk, body, ad)
            self.ckr, self.nr = ck, n + 1
            self.peer_pq = self.peer_pq or parts is not None
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
        kem_remote = self.kem_remote
        if parts is not None and parts.pk is not None:
            if not kem.is_valid_public_key(parts.pk):
                raise DecryptionError()
            kem_remote = (parts.pk_id, parts.pk)
        if parts is not None and parts.ct is not None:
            # MUST: a ciphertext only to the KEM key we announced and still hold.
            if self.kem_own is None or self.kem_own[0] != parts.ct_key_id:
                raise DecryptionError()
            own = kem.KemKeyPair(self.kem_own[1])
            ss = own.decapsulate(parts.ct)
            root_key, ckr = kdf_rk_pq(self.root_key, dh_out, ss, own.public, parts.ct)
        else:
            root_key, ckr = kdf_rk(self.root_key, dh_out)
        new_skipped, ck, mk = _advance(ckr, 0, n, dh_pub)
        plaintext = _open(mk, body, ad)
        # Authenticated: commit the step. Our sending chain closes; the next send opens one.
        self.root_key = root_key
        self.dhr, self.ckr, self.nr = dh_pub, ck, n + 1
        self.cks = None
        if parts is not None:
            self.peer_pq = True
            self.kem_remote = kem_remote
            if parts.ct is not None:
                self.kem_own = None  # used: its private key is erased with this state
        self._store_skipped(old_skipped + new_skipped, now)
        return plaintext

    def _store_skipped(self, keys: list[Skipped], now: int) -> None:
        if not keys and not self.skipped:
            return
        skipped = self.skipped
        for slot, mk in keys:
            skipped[slot] = (mk, now)
        self.purge_skipped(now)

    def purge_skipped(self, now: int) -> bool:
        """Drop expired skipped keys (oldest first), then enforce the cap. True if any went."""
        skipped = self.skipped
        before = len(skipped)
        cutoff = now - MAX_SKIPPED_KEY_AGE_MS
        for slot in list(skipped):
            if skipped[slot][1] >= cutoff:
                break
            del skipped[slot]
        while len(skipped) > MAX_MESSAGE_KEYS:
            del skipped[next(iter(skipped))]
        return len(skipped) != before

    # --- persistence ---

    def encode(self) -> bytes:
        w = Writer().u8(_STATE_V2).raw(self.root_key)
        w.opt(self.dhs_private).opt(self.dhs_public).opt(self.dhr)
        w.opt(self.cks).u32(self.ns).u32(self.pn).opt(self.ckr).u32(self.nr)
        w.u32(len(self.skipped))
        for (pub, n), (mk, stored) in self.skipped.items():
            w.raw(pub).u32(n).raw(mk).u64(stored)
        w.var(self.ad_send).var(self.ad_recv)
        w.u8((1 if self.pq else 0) | (2 if self.peer_pq else 0))
        if self.kem_own is None:
            w.u8(0)
        else:
            w.u8(1).u32(self.kem_own[0]).raw(self.kem_own[1])
        if self.kem_remote is None:
            w.u8(0)
        else:
            w.u8(1).u32(self.kem_remote[0]).raw(self.kem_remote[1])
        w.u32(self.kem_next_id).var(self.pq_send).u32(self.pq_count).u64(self.pq_last)
        return w.bytes()

    @classmethod
    def decode(cls, data: bytes) -> RatchetState:
        r = Reader(data)
        version = r.u8()
        if version not in (_STATE_V1, _STATE_V2):
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
        state = cls(
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
        if version == _STATE_V1:
            # A classical session from before the PQ ratchet: it upgrades itself. Its open
            # sending chain (if any) goes on as 0x04 with no KEM parts; the next one
            # announces a KEM key, and the peer's PQ step follows.
            r.end()
            return state
        flags = r.u8()
        if flags & ~3:
            raise DecodeError("unknown ratchet state flags")
        state.pq, state.peer_pq = bool(flags & 1), bool(flags & 2)
        if r.u8():
            state.kem_own = (r.u32(), r.raw(kem.SEED_LEN))
        if r.u8():
            state.kem_remote = (r.u32(), r.raw(kem.PUBLIC_KEY_LEN))
        state.kem_next_id = r.u32()
        state.pq_send = r.var(1 + _PQ_CT_LEN + _PQ_PK_LEN)
        state.pq_count, state.pq_last = r.u32(), r.u64()
        r.end()
        return state


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
