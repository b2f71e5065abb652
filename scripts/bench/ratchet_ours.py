"""imsg's protocol core, timed on this machine (run by scripts/bench_ratchet).

(a) Double Ratchet, 200-byte messages, one direction: encrypt + decrypt per message
(b) the same, alternating direction every message (a DH ratchet step each time)
(c) the hybrid handshake, both sides, ML-KEM-768 included: session.initiate (verify the
    bundle's signatures, PQXDH with encapsulation) + the first session.decrypt on the
    responder (PQXDH with decapsulation, first ratchet message); the prekeys are made
    beforehand, as they are in real life (published long before)
(e) (a) and (b) with classical states (no PQ ratchet, §5a) in the same run, and the mean
    ratchet-message bytes per 200-byte message of each, one way and alternating
(d) (c) through the full envelope/content layer: content encode, seal_content, envelope
    encode, then envelope decode, session.decrypt, open_content, content decode; and
    steady-state messages/s through that layer
Prints one JSON object on stdout.
"""

from __future__ import annotations

import json
import os
import sys
import time

from imsg.protocol import envelope as env
from imsg.protocol import ratchet as rt
from imsg.protocol import session as sess
from imsg.protocol.content import KIND_TEXT, Content
from imsg.protocol.identity import AccountKey, DeviceKeys
from imsg.protocol.prekeys import KemPreKey, OneTimePreKey, PreKeyBundle, SignedPreKey
from imsg.store.memory import MemoryStore

NOW = int(time.time() * 1000)
MSG = os.urandom(200)
rng = os.urandom


class Party:
    def __init__(self, device_id: int = 1):
        self.account = AccountKey.generate(rng)
        self.device = DeviceKeys.generate(device_id, rng)
        self.address = sess.Address(self.account.account_id, device_id)
        self.store = MemoryStore()

    def fresh_bundle(self) -> PreKeyBundle:
        """A new signed prekey, one-time KEM prekey and one-time X25519 prekey (not timed)."""
        s, d = self.store, self.device
        spk = SignedPreKey.generate(d, s.next_prekey_id(), NOW, rng)
        kpk = KemPreKey.generate(d, s.next_prekey_id(), NOW, rng, last_resort=False)
        otk = OneTimePreKey.generate(s.next_prekey_id(), rng)
        s.save_signed_prekey(spk)
        s.save_kem_prekey(kpk)
        s.save_one_time_prekey(otk)
        return PreKeyBundle(
            device_id=d.device_id,
            signed_prekey_id=spk.key_id,
            signed_prekey=spk.public,
            signed_prekey_signature=spk.signature,
            kem_prekey_id=kpk.key_id,
            kem_prekey=kpk.public,
            kem_prekey_signature=kpk.signature,
            kem_last_resort=False,
            one_time_prekey_id=otk.key_id,
            one_time_prekey=otk.public,
        )


def handshake(alice: Party, bob: Party, bundle: PreKeyBundle, payload: bytes = MSG):
    a = sess.initiate(
        alice.device, alice.address, bob.address, bob.device.identity.public, bob.device.signing.public, bundle, rng
    )
    first = a.encrypt(payload, rng)
    result = sess.decrypt(
        None,
        first,
        local=bob.device,
        local_address=bob.address,
        remote_address=alice.address,
        remote_identity_key=alice.device.identity.public,
        prekeys=bob.store,
        now=NOW,
    )
    assert result.plaintext == payload
    return a, result.record.current


def handshake_full(alice: Party, bob: Party, bundle: PreKeyBundle):
    """The same through the envelope and content layers, as client.send and the inbox do."""
    mid = os.urandom(16).hex()
    content = Content(mid, NOW, KIND_TEXT, "alice@example.com", "bob@example.com", "x" * 200)
    package, content_ct = env.seal_content(content.encode(), rng)
    a = sess.initiate(
        alice.device, alice.address, bob.address, bob.device.identity.public, bob.device.signing.public, bundle, rng
    )
    wire = env.Envelope(env.KIND_IDENTIFIED, alice.address, a.encrypt(package, rng), content_ct).encode()
    e = env.Envelope.decode(wire)
    result = sess.decrypt(
        None,
        e.session_message,
        local=bob.device,
        local_address=bob.address,
        remote_address=e.sender,
        remote_identity_key=alice.device.identity.public,
        prekeys=bob.store,
        now=NOW,
    )
    got = Content.decode(env.open_content(result.plaintext, e.content_ciphertext))
    assert got.text == content.text and got.message_id == mid
    return a, result.record.current


def median_ms(fn, runs: int) -> float:
    alice, bob = Party(), Party()
    times = []
    for _ in range(runs):
        bundle = bob.fresh_bundle()
        t0 = time.perf_counter()
        fn(alice, bob, bundle)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2] * 1000


def rate(step, seconds: float) -> float:
    n = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while True:
        for _ in range(200):
            step(n)
            n += 1
        now = time.perf_counter()
        if now >= end:
            return n / (now - t0)


def main(seconds: float) -> None:
    alice, bob = Party(), Party()
    a, b = handshake(alice, bob, bob.fresh_bundle())
    # Bob replies once: Alice's pending prekey prefix goes away, both chains are live.
    a.decrypt_ratchet(b.encrypt(MSG, rng), NOW)
    ra, rb = a.ratchet, b.ratchet

    def one_way(n):
        assert rb.decrypt(ra.encrypt(MSG, rng), NOW) == MSG

    def alternating(n):
        s, r = (ra, rb) if n % 2 == 0 else (rb, ra)
        assert r.decrypt(s.encrypt(MSG, rng), NOW) == MSG

    def full_one_way(n):
        content = Content("0" * 32, NOW, KIND_TEXT, "alice@example.com", "bob@example.com", "x" * 200)
        package, ct = env.seal_content(content.encode(), rng)
        wire = env.Envelope(env.KIND_IDENTIFIED, alice.address, a.encrypt(package, rng), ct).encode()
        e = env.Envelope.decode(wire)
        got = Content.decode(env.open_content(b.decrypt_ratchet(e.session_message, NOW), e.content_ciphertext))
        assert got.text == content.text

    # The same pair with classical senders: copies of the states, with pq off.
    ca, cb = (rt.RatchetState.decode(x.encode()) for x in (ra, rb))
    ca.pq = cb.pq = ca.peer_pq = cb.peer_pq = False
    sizes: dict[str, list[int]] = {}

    def sized(key, s, r):
        m = s.encrypt(MSG, rng)
        sizes.setdefault(key, []).append(len(m))
        assert r.decrypt(m, NOW) == MSG

    def one_way_classical(n):
        sized("bytes_one_way_classical", ca, cb)

    def alternating_classical(n):
        s, r = (ca, cb) if n % 2 == 0 else (cb, ca)
        sized("bytes_alternating_classical", s, r)

    def one_way_sized(n):
        sized("bytes_one_way", ra, rb)

    def alternating_sized(n):
        s, r = (ra, rb) if n % 2 == 0 else (rb, ra)
        sized("bytes_alternating", s, r)

    out = {
        "one_way": rate(one_way, seconds),
        "alternating": rate(alternating, seconds),
        "one_way_classical": rate(one_way_classical, seconds),
        "alternating_classical": rate(alternating_classical, seconds),
        "handshake_ms": median_ms(handshake, 200),
        "handshake_full_ms": median_ms(handshake_full, 200),
        "full_one_way": rate(full_one_way, seconds),
    }
    for fn in (one_way_sized, alternating_sized):
        for n in range(2000):
            fn(n)
    out.update({key: sum(v) / len(v) for key, v in sizes.items()})
    print(json.dumps(out))


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 2.0)
