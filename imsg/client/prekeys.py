"""This device's prekeys: the signed prekey rotated weekly, a last-resort ML-KEM prekey, and
batches of one-time X25519 and ML-KEM prekeys refilled when the relay runs low.

Private halves are committed before the public halves are published, so the relay can
never serve a prekey this device cannot use.
"""

from __future__ import annotations

from typing import Any

from imsg.client.context import Context
from imsg.protocol import consts
from imsg.protocol.encoding import KEY_MLKEM768, KEY_X25519, encode_key
from imsg.protocol.prekeys import KemPreKey, OneTimePreKey, SignedPreKey
from imsg.relay_client import b64e


class Prekeys:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    def maintain(self, *, force: bool = False) -> dict[str, Any]:
        """Rotate the signed prekey weekly, keep a last-resort KEM prekey, refill one-time
        prekeys when the relay holds fewer than the refill mark. Returns what was published."""
        ctx, store = self.ctx, self.ctx.store
        device = ctx.device(ctx.account())
        now = ctx.now_ms()
        payload: dict[str, Any] = {}
        with store.transaction():
            signed = store.signed_prekeys()
            newest = signed[-1] if signed else None
            if newest is None or now - newest.created_at > consts.SIGNED_PREKEY_ROTATE_MS:
                spk = SignedPreKey.generate(device, store.next_prekey_id(), now, ctx.rng)
                store.save_signed_prekey(spk)
                payload["signed_prekey"] = {
                    "key_id": spk.key_id,
                    "public_key": b64e(encode_key(KEY_X25519, spk.public)),
                    "signature": b64e(spk.signature),
                }
                # Old signed prekeys stay for mail still in flight, then go.
                for old in signed:
                    if now - old.created_at > consts.SIGNED_PREKEY_KEEP_MS:
                        store.remove_signed_prekey(old.key_id)
            if force:
                kpk = KemPreKey.generate(device, store.next_prekey_id(), now, ctx.rng, last_resort=True)
                store.save_kem_prekey(kpk)
                payload["kem_last_resort"] = _kem_json(kpk)
        counts = ctx.relay().key_count() if not force else {"one_time": 0, "kem_one_time": 0}
        with store.transaction():
            if int(counts.get("one_time", 0)) < consts.ONE_TIME_PREKEY_REFILL_BELOW:
                one_time = [
                    OneTimePreKey.generate(store.next_prekey_id(), ctx.rng) for _ in range(consts.ONE_TIME_PREKEY_BATCH)
                ]
                for k in one_time:
                    store.save_one_time_prekey(k)
                payload["one_time"] = [
                    {"key_id": k.key_id, "public_key": b64e(encode_key(KEY_X25519, k.public))} for k in one_time
                ]
            if int(counts.get("kem_one_time", 0)) < consts.ONE_TIME_PREKEY_REFILL_BELOW:
                kem = [
                    KemPreKey.generate(device, store.next_prekey_id(), now, ctx.rng, last_resort=False)
                    for _ in range(consts.ONE_TIME_PREKEY_BATCH)
                ]
                for kk in kem:
                    store.save_kem_prekey(kk)
                payload["kem_one_time"] = [_kem_json(kk) for kk in kem]
        if payload:
            ctx.relay().publish_keys(payload)
        return payload

    def signed_prekey_due(self) -> bool:
        signed = self.ctx.store.signed_prekeys()
        return not signed or self.ctx.now_ms() - signed[-1].created_at > consts.SIGNED_PREKEY_ROTATE_MS


def _kem_json(k: KemPreKey) -> dict[str, Any]:
    return {"key_id": k.key_id, "public_key": b64e(encode_key(KEY_MLKEM768, k.public)), "signature": b64e(k.signature)}
