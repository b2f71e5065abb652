"""This device's prekeys: the signed prekey rotated weekly, a last-resort ML-KEM prekey
rotated on the same schedule, and batches of one-time X25519 and ML-KEM prekeys refilled
when the relay runs low.

Private halves are committed before the public halves are published, so the relay can
never serve a prekey this device cannot use.

The relay's counts are checked after every receive, not only after a prekey message: any
account may take one-time prekeys with bundle fetches that never become messages, and a
drained device would otherwise put every new session on its last-resort key until the
weekly rotation. The last-resort KEM key is the one every such session shares, so it is
replaced weekly too (PQXDH revision 3 §4.2) and a replaced one's private key is deleted
once no prekey message naming it can still be in flight (SIGNED_PREKEY_KEEP_MS after its
successor was published: the relay holds mail 30 days).
"""

from __future__ import annotations

from typing import Any

from imsg.client.context import Context
from imsg.protocol import consts
from imsg.protocol.encoding import KEY_MLKEM768, KEY_X25519, encode_key
from imsg.protocol.prekeys import KemPreKey, OneTimePreKey, SignedPreKey
from imsg.protocol.stores import Store
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
            last_resort = _last_resort_keys(store)
            if force or not last_resort or now - last_resort[-1][1] > consts.SIGNED_PREKEY_ROTATE_MS:
                kpk = KemPreKey.generate(device, store.next_prekey_id(), now, ctx.rng, last_resort=True)
                store.save_kem_prekey(kpk)
                payload["kem_last_resort"] = _kem_json(kpk)
                last_resort.append((kpk.key_id, now))
            # A replaced last-resort key goes once its successor has been out for the grace
            # period; until then prekey messages that name it still decrypt.
            kept = []
            for i, (key_id, created) in enumerate(last_resort):
                successor_at = last_resort[i + 1][1] if i + 1 < len(last_resort) else None
                if successor_at is not None and now - successor_at > consts.SIGNED_PREKEY_KEEP_MS:
                    store.remove_kem_prekey(key_id)
                else:
                    kept.append((key_id, created))
            if store.get_setting(_SETTING_LAST_RESORT) is None or kept != _last_resort_keys(store):
                _save_last_resort_keys(store, kept)
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

    def after_receive(self, used_prekeys: bool) -> dict[str, Any]:
        """Run after every receive, whether or not a prekey message came: rotations that are
        due, and a refill if the relay reports the one-time keys low (one count request).
        `used_prekeys` is kept for the caller's clarity; the count decides."""
        return self.maintain()

    def signed_prekey_due(self) -> bool:
        signed = self.ctx.store.signed_prekeys()
        return not signed or self.ctx.now_ms() - signed[-1].created_at > consts.SIGNED_PREKEY_ROTATE_MS


def _kem_json(k: KemPreKey) -> dict[str, Any]:
    return {"key_id": k.key_id, "public_key": b64e(encode_key(KEY_MLKEM768, k.public)), "signature": b64e(k.signature)}


# The last-resort KEM keys this device holds, oldest first, as "id:created_at,..." in a
# setting: the prekey table stores KEM keys as opaque records, and decoding every one-time
# key to find them would re-derive 100 ML-KEM keys on every receive.
_SETTING_LAST_RESORT = "kem_last_resort_keys"


def _last_resort_keys(store: Store) -> list[tuple[int, int]]:
    raw = store.get_setting(_SETTING_LAST_RESORT)
    if raw is None:
        # A home from before the rotation: find its last-resort keys once.
        found = []
        for kid in store.kem_prekey_ids():
            key = store.get_kem_prekey(kid)
            if key is not None and key.last_resort:
                found.append((key.key_id, key.created_at))
        return sorted(found, key=lambda k: (k[1], k[0]))
    out = []
    for item in filter(None, raw.split(",")):
        key_id, _, created = item.partition(":")
        out.append((int(key_id), int(created)))
    return out


def _save_last_resort_keys(store: Store, keys: list[tuple[int, int]]) -> None:
    store.set_setting(_SETTING_LAST_RESORT, ",".join(f"{k}:{t}" for k, t in keys))
