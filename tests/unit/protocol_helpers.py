"""A `SessionPair`: Alice and Bob on in-memory stores with a seeded RNG and an injected
clock, joined by a fake link (as h11's ConnectionPair). Nothing here touches a network.

The receive path is the client's own: `imsg.protocol.receive` (sender device, content
id and kind checks; decrypt, then session save and used-prekey removal in one transaction),
which imsg/client/inbox.py runs too. The send path follows the client's
`Delivery.encrypt_for` (imsg/client/delivery.py): the sender promotes a fresh
`session.initiate` into its record when it has no session, then `Session.encrypt`s and
saves the record.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from imsg.crypto import dh
from imsg.protocol import envelope as env
from imsg.protocol import ratchet as rt
from imsg.protocol import receive
from imsg.protocol import session as sess
from imsg.protocol.content import KIND_TEXT, Content
from imsg.protocol.identity import AccountKey, DeviceKeys, DeviceList, verify_device_list
from imsg.protocol.prekeys import KemPreKey, OneTimePreKey, PreKeyBundle, SignedPreKey
from imsg.store.memory import MemoryStore

T0 = 1_700_000_000_000  # ms: a fixed "now" so that runs are reproducible

# RFC 7748 §5 / Wycheproof: u-coordinates whose X25519 output is all zeros for every
# scalar (low-order points, and their non-canonical encodings modulo p = 2^255 - 19).
_P = 2**255 - 19
_ORDER8 = [
    0x00B8495F16056286FDB1329CEB8D09DA6AC49FF1FAE35616AEB8413B7C7AEBE0,
    0x57119FD0DD4E22D8868E1C58C45C44045BEF839C55B1D0B1248C50A3BC959C5F,
]
LOW_ORDER_POINTS: list[bytes] = [
    u.to_bytes(32, "little")
    for u in [0, 1, *_ORDER8, _P - 1, _P, _P + 1, *(x + _P for x in _ORDER8 if x + _P < 2**255)]
] + [
    # the same with the (ignored) high bit set
    (u | (1 << 255)).to_bytes(32, "little")
    for u in [0, 1, *_ORDER8, _P - 1]
]


def seeded_rng(seed: int):
    return random.Random(seed).randbytes


@dataclass
class Party:
    name: str
    account: AccountKey
    device: DeviceKeys
    store: MemoryStore
    device_list: bytes
    address: sess.Address
    rng: object
    sent: list[tuple[bytes, int]] = field(default_factory=list)  # (ratchet pk, n) audit log

    @classmethod
    def create(cls, name: str, rng, now: int, *, device_id: int = 1, one_time: int = 3) -> Party:
        account = AccountKey.generate(rng)
        device = DeviceKeys.generate(device_id, rng)
        device_list = account.sign_device_list(
            DeviceList(account.public, serial=1, signed_at=now, devices=(device.entry(now),))
        )
        store = MemoryStore()
        store.save_signed_prekey(SignedPreKey.generate(device, store.next_prekey_id(), now, rng))
        store.save_kem_prekey(KemPreKey.generate(device, store.next_prekey_id(), now, rng, last_resort=True))
        store.save_kem_prekey(KemPreKey.generate(device, store.next_prekey_id(), now, rng, last_resort=False))
        for _ in range(one_time):
            store.save_one_time_prekey(OneTimePreKey.generate(store.next_prekey_id(), rng))
        return cls(name, account, device, store, device_list, sess.Address(account.account_id, device_id), rng)

    # --- what the relay would serve for this device ---

    def bundle(self, *, one_time: bool = True, one_time_kem: bool = True) -> PreKeyBundle:
        s = self.store
        spk = s.signed_prekeys()[-1]
        kems = sorted(s._kem.values(), key=lambda k: k.key_id)
        kpk = next((k for k in kems if not k.last_resort), None) if one_time_kem else None
        kpk = kpk or next(k for k in kems if k.last_resort)
        otk = min(s._one_time.values(), key=lambda k: k.key_id) if one_time and s._one_time else None
        return PreKeyBundle(
            device_id=self.device.device_id,
            signed_prekey_id=spk.key_id,
            signed_prekey=spk.public,
            signed_prekey_signature=spk.signature,
            kem_prekey_id=kpk.key_id,
            kem_prekey=kpk.public,
            kem_prekey_signature=kpk.signature,
            kem_last_resort=kpk.last_resort,
            one_time_prekey_id=otk.key_id if otk else None,
            one_time_prekey=otk.public if otk else None,
        )

    def prekey_snapshot(self) -> tuple:
        s = self.store
        return (sorted(s._signed), sorted(s._kem), sorted(s._one_time))


class SessionPair:
    """Alice and Bob, each with a MemoryStore, a seeded RNG and a shared fake clock."""

    def __init__(self, seed: int = 0, now: int = T0, *, one_time: int = 3):
        self.now = now
        self.alice = Party.create("alice", seeded_rng(seed * 2 + 1), now, one_time=one_time)
        self.bob = Party.create("bob", seeded_rng(seed * 2 + 2), now, one_time=one_time)

    def peer(self, p: Party) -> Party:
        return self.bob if p is self.alice else self.alice

    def party(self, name: str | Party) -> Party:
        return name if isinstance(name, Party) else getattr(self, name)

    # --- records ---

    def record(self, who, peer=None) -> sess.SessionRecord | None:
        who = self.party(who)
        peer = self.party(peer) if peer is not None else self.peer(who)
        raw = who.store.load_session(peer.address)
        return sess.SessionRecord.decode(raw) if raw is not None else None

    def raw_record(self, who) -> bytes | None:
        who = self.party(who)
        return who.store.load_session(self.peer(who).address)

    def state(self, who) -> tuple:
        """Everything decrypting may change: the stored record and the prekeys."""
        who = self.party(who)
        return self.raw_record(who), who.prekey_snapshot(), who.store._messages.copy()

    # --- session set-up and messaging, as the client does it ---

    def start(self, who="alice", *, one_time: bool = True, one_time_kem: bool = True) -> sess.Session:
        """`who` initiates a session to its peer from the peer's published bundle."""
        me = self.party(who)
        peer = self.peer(me)
        trusted = verify_device_list(peer.device_list, peer.account.public)
        entry = trusted.device(peer.device.device_id)
        raw = me.store.load_session(peer.address)
        record = sess.SessionRecord.decode(raw) if raw else sess.SessionRecord()
        session = sess.initiate(
            me.device,
            me.address,
            peer.address,
            entry.identity_key,
            entry.signing_key,
            peer.bundle(one_time=one_time, one_time_kem=one_time_kem),
            me.rng,
        )
        record.promote(session)
        me.store.save_session(peer.address, record.encode())
        return session

    def send(self, who, plaintext: bytes) -> bytes:
        """Encrypt one session message from `who` to its peer (starting a session if
        needed) and save the advanced record first, as `Delivery.encrypt_for` does."""
        me = self.party(who)
        peer = self.peer(me)
        with me.store.transaction():
            record = self.record(me)
            if record is None or record.current is None:
                self.start(me)
                record = self.record(me)
            ratchet = record.current.ratchet
            message = record.current.encrypt(plaintext, me.rng)
            inner = message[sess._PREKEY_LEN :] if sess.message_type(message) == sess.MSG_PREKEY else message
            dh_pub, _, n = rt.parse_header(inner)
            assert ratchet.sending_position == (dh_pub, n + 1)
            me.sent.append((dh_pub, n))
            me.store.save_session(peer.address, record.encode())
        return message

    def deliver(self, to, message: bytes) -> sess.Decrypted:
        """Decrypt a session message at `to` and commit, as the client does
        (`receive.accept`: session save and used-prekey removal in the same transaction)."""
        me = self.party(to)
        peer = self.peer(me)
        _, result = receive.accept(me.store, message, then=lambda plaintext: None, **self._keys(me, peer.address))
        return result

    def _decrypt(self, me: Party, peer: Party, message: bytes) -> sess.Decrypted:
        """Decrypt only (nothing is written), as `receive.accept` does first."""
        return receive.decrypt(me.store, message, **self._keys(me, peer.address))

    def _keys(self, me: Party, sender: sess.Address) -> dict:
        """The keyword arguments of receive.decrypt/accept for a message `sender` sent to
        `me`: the sender device's identity key from its account's signed device list."""
        peer = self.peer(me)
        trusted = verify_device_list(peer.device_list, peer.account.public)
        entry = receive.sender_device(trusted, sender)
        return {
            "local": me.device,
            "local_address": me.address,
            "remote_address": sender,
            "remote_identity_key": entry.identity_key,
            "now": self.now,
        }

    # --- envelopes (content layer included) ---

    def send_envelope(self, who, text: str, message_id: str | None = None) -> tuple[str, bytes]:
        me = self.party(who)
        mid = message_id or me.rng(16).hex()
        content = Content(mid, self.now, KIND_TEXT, me.name, self.peer(me).name, text)
        package, ciphertext = env.seal_content(content.encode(), me.rng)
        session_message = self.send(me, package)
        return mid, env.Envelope(env.KIND_IDENTIFIED, me.address, session_message, ciphertext).encode()

    def receive_envelope(self, to, blob: bytes, message_id: str | None = None) -> Content:
        """The client's receive rules (imsg.protocol.receive), minus the relay and the
        message store: everything is parsed only through decoders of peer data, and nothing
        is saved unless all of it succeeds. Without `message_id` (no relay envelope to
        bind) the content-id check is left out."""
        me = self.party(to)
        envelope = env.Envelope.decode(blob)
        own = receive.from_own_account(envelope.sender, me.address)  # False: two accounts

        def keep(plaintext: bytes) -> Content:
            content = receive.open_content(plaintext, envelope.content_ciphertext)
            if message_id is not None:
                receive.check_content_id(content, message_id)
            receive.check_kind(content, own=own)
            return content

        keys = self._keys(me, envelope.sender)
        content, _ = receive.accept(me.store, envelope.session_message, then=keep, **keys)
        return content

    def handshake(self) -> None:
        """Alice starts, Bob answers: afterwards both send plain ratchet messages."""
        self.deliver("bob", self.send("alice", b"hello"))
        self.deliver("alice", self.send("bob", b"hi"))


def ratchet_pair(seed: int = 0, *, pq: bool = True) -> tuple[rt.RatchetState, rt.RatchetState, object]:
    """Two bare ratchets sharing a random SK (no PQXDH: fast, for ratchet-only tests).
    Returns (alice, bob, rng); Alice sends first. `pq=False`: classical senders (0x02)."""
    rng = seeded_rng(1000 + seed)
    sk = rng(32)
    bob_spk = dh.KeyPair(rng(32))
    a2b = b"imsg-test/ad/alice->bob"
    b2a = b"imsg-test/ad/bob->alice"
    alice = rt.RatchetState.initiator(sk, bob_spk.public, ad_send=a2b, ad_recv=b2a, pq=pq)
    bob = rt.RatchetState.responder(sk, bob_spk, ad_send=b2a, ad_recv=a2b, pq=pq)
    return alice, bob, rng


def flip(data: bytes, pos: int, bit: int = 0) -> bytes:
    b = bytearray(data)
    b[pos] ^= 1 << bit
    return bytes(b)
