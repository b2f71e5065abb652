"""Reference figures with the PyPI packages `doubleratchet` and `x3dh` (Syndace), run in a
throwaway venv under .bench/ by scripts/bench_ratchet. Prints one JSON object on stdout:
{"one_way": msgs/s, "alternating": msgs/s, "handshake_ms": ms}. Same shape as ours:
200-byte messages, encrypt + decrypt counted together; the handshake is X3DH on both sides
plus the Double Ratchet's first message (encrypt_initial_message + decrypt_initial_message).
"""

import asyncio
import json
import os
import sys
import time

import doubleratchet
import x3dh
from doubleratchet.recommended import (
    HashFunction,
    aead_aes_hmac,
    diffie_hellman_ratchet_curve25519,
    kdf_hkdf,
    kdf_separate_hmacs,
)


class AEAD(aead_aes_hmac.AEAD):
    @staticmethod
    def _get_hash_function():
        return HashFunction.SHA_256

    @staticmethod
    def _get_info():
        return b"bench aead"


class RootKDF(kdf_hkdf.KDF):
    @staticmethod
    def _get_hash_function():
        return HashFunction.SHA_256

    @staticmethod
    def _get_info():
        return b"bench root"


class MsgKDF(kdf_separate_hmacs.KDF):
    @staticmethod
    def _get_hash_function():
        return HashFunction.SHA_256


class DR(doubleratchet.DoubleRatchet):
    @staticmethod
    def _build_associated_data(associated_data, header):
        return (
            associated_data
            + header.ratchet_pub
            + header.sending_chain_length.to_bytes(8, "big")
            + header.previous_sending_chain_length.to_bytes(8, "big")
        )


class X3DHState(x3dh.BaseState):
    @staticmethod
    def _encode_public_key(key_format, pub):
        return b"\x05" + pub


DR_ARGS = dict(
    diffie_hellman_ratchet_class=diffie_hellman_ratchet_curve25519.DiffieHellmanRatchet,
    root_chain_kdf=RootKDF,
    message_chain_kdf=MsgKDF,
    message_chain_constant=b"\x01\x02",
    dos_protection_threshold=1000,
    max_num_skipped_message_keys=1000,
    aead=AEAD,
)
MSG = os.urandom(200)


async def handshake():
    """X3DH both sides + first Double Ratchet message both sides. Returns the two ratchets."""
    bob = X3DHState.create(x3dh.IdentityKeyFormat.CURVE_25519, x3dh.HashFunction.SHA_256, b"bench")
    bob.generate_pre_keys(1)
    alice = X3DHState.create(x3dh.IdentityKeyFormat.CURVE_25519, x3dh.HashFunction.SHA_256, b"bench")
    bundle = bob.bundle
    t0 = time.perf_counter()
    sk, ad, header = await alice.get_shared_secret_active(bundle)
    dr_a, first = await DR.encrypt_initial_message(
        shared_secret=sk, recipient_ratchet_pub=bundle.signed_pre_key, message=MSG, associated_data=ad, **DR_ARGS
    )
    sk_b, ad_b, spk = await bob.get_shared_secret_passive(header)
    dr_b, plain = await DR.decrypt_initial_message(
        shared_secret=sk_b, own_ratchet_priv=spk.priv, message=first, associated_data=ad_b, **DR_ARGS
    )
    elapsed = time.perf_counter() - t0
    assert plain == MSG
    return elapsed, dr_a, dr_b, ad


async def main(seconds: float):
    times = []
    for _ in range(30):
        elapsed, *_ = await handshake()
        times.append(elapsed)
    times.sort()
    handshake_ms = times[len(times) // 2] * 1000

    _, a, b, ad = await handshake()
    # Bob answers once so that both chains are live.
    m = await b.encrypt_message(MSG, ad)
    await a.decrypt_message(m, ad)

    async def run(alternate: bool) -> float:
        n = 0
        t0 = time.perf_counter()
        end = t0 + seconds
        while True:
            for _ in range(50):
                s, r = (a, b) if not alternate or n % 2 == 0 else (b, a)
                m = await s.encrypt_message(MSG, ad)
                assert await r.decrypt_message(m, ad) == MSG
                n += 1
            now = time.perf_counter()
            if now >= end:
                return n / (now - t0)

    one_way = await run(False)
    alternating = await run(True)
    print(
        json.dumps(
            {
                "one_way": one_way,
                "alternating": alternating,
                "handshake_ms": handshake_ms,
                "doubleratchet": doubleratchet.__version__,
                "x3dh": x3dh.__version__,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1]) if len(sys.argv) > 1 else 2.0))
