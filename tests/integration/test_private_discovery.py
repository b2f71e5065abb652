"""Issue 12 (private delivery), the discovery rows, against the real relay wrapped in a
middleware that records what it is asked and can rewrite what it answers — a relay
operator who records every request and deviates from the protocol:

- row 3: `prefix_bits` beyond the client's floor, buckets smaller than MIN_BUCKET, a
  different OPRF key per evaluation, an invalid VOPRF proof, a discovery key changed
  without a trusted signature: each refused (SecurityError, exit 6 through the CLI); a
  handle looked up again never has a longer prefix read than its first lookup;
- row 4 (the re-lookup part): a send to a pinned contact makes no discovery request;
- row 7: a sender-lookup 429 (a drained budget) never stops receive.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import imsg_oprf
from imsg import errors
from imsg.client import Client
from imsg.protocol import discovery

from support.cli import clean_env, run_imsg
from support.relays import ThreadRelay, relay_settings

ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@example.com"
Rewrite = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]


class Rewriter:
    """ASGI middleware around the relay app: records (method, path, authorized, JSON
    body) of every request and lets a test replace the answer of a path with a 200 of
    `rewrite[path](request_body, real_answer_body)`."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.log: list[tuple[str, str, bool, Any]] = []
        self.rewrite: dict[str, Rewrite] = {}
        self.lock = threading.Lock()

    def requests(self, path: str) -> list[tuple[bool, Any]]:
        with self.lock:
            return [(auth, body) for _, p, auth, body in self.log if p == path]

    def clear(self) -> None:
        with self.lock:
            self.log.clear()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        headers = dict(scope.get("headers") or [])
        chunks = []
        while True:  # read the whole request body, then replay it to the app
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        raw = b"".join(chunks)
        try:
            request_body = json.loads(raw) if raw else None
        except ValueError:
            request_body = None
        with self.lock:
            self.log.append((scope["method"], path, b"authorization" in headers, request_body))
            rewrite = self.rewrite.get(path)
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": raw, "more_body": False}

        if rewrite is None:
            return await self.app(scope, replay, send)
        start: dict[str, Any] = {}
        body = bytearray()

        async def capture(message: Any) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                body.extend(message.get("body", b""))

        await self.app(scope, replay, capture)
        # The operator answers what it likes, whatever the real relay said (a 409 for a
        # prefix length it does not use becomes the 200 the rewrite makes up).
        out = json.dumps(rewrite(request_body, json.loads(bytes(body)) if body else {})).encode()
        headers_out = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers_out.append((b"content-length", str(len(out)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers_out})
        await send({"type": "http.response.body", "body": out})


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def evil(tmp_path: Path):
    r = ThreadRelay(relay_settings(tmp_path / "relay-data"), wrap=Rewriter).start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
def clients(tmp_path: Path, evil: ThreadRelay):
    opened: list[Client] = []

    def make(name: str) -> Client:
        c = Client.open(tmp_path / "homes" / name, relay=evil.url)
        opened.append(c)
        c.init(f"{name}@example.com", name=name.capitalize())
        return c

    yield make
    for c in opened:
        c.close()


def _fresh_key_evaluation(request: dict[str, Any], answer: dict[str, Any], *, claim_pinned: bool) -> dict[str, Any]:
    """What a relay that wants to link lookups does: evaluate under a key of its own."""
    from imsg_oprf import voprf  # (imported here: the file must collect on the code before VOPRF)

    sk, pk = imsg_oprf.derive_key_pair(os.urandom(32), b"per-lookup", imsg_oprf.MODE_VOPRF)
    elements = [base64.b64decode(e) for e in request["elements"]]
    evaluated, proof = voprf.blind_evaluate_batch(sk, pk, elements, os.urandom)
    key_id = answer["key_id"] if claim_pinned else discovery.discovery_key_id(pk)
    return {**answer, "evaluated": [_b64(e) for e in evaluated], "proof": _b64(proof), "key_id": key_id}


# --- row 3: a relay that deviates from discovery ---


def test_prefix_bits_beyond_the_clients_floor_are_refused(clients, evil):
    alice, _ = clients("alice"), clients("bob")
    evil.middleware.rewrite["/v1/discovery/evaluate"] = lambda req, ans: {**ans, "prefix_bits": 16}
    evil.middleware.clear()
    with pytest.raises(errors.SecurityError) as exc:
        alice.lookup([BOB])
    assert exc.value.exit_code == 6 and "prefixes" in str(exc.value)
    assert evil.middleware.requests("/v1/discovery/buckets") == []  # nothing narrowed was read


def test_buckets_smaller_than_the_minimum_are_refused(clients, evil):
    """A relay that asks for 3-bit prefixes (allowed) but serves buckets of a handful."""
    alice, _ = clients("alice"), clients("bob")
    evil.middleware.rewrite["/v1/discovery/evaluate"] = lambda req, ans: {**ans, "prefix_bits": 3}
    evil.middleware.rewrite["/v1/discovery/buckets"] = lambda req, ans: {
        "prefix_bits": 3,
        "buckets": [{"prefix": p, "entries": []} for p in req["prefixes"]],
    }
    with pytest.raises(errors.SecurityError) as exc:
        alice.lookup([BOB])
    assert "bucket" in str(exc.value)


@pytest.mark.parametrize("claim_pinned", [False, True], ids=["own-key-id", "pinned-key-id"])
def test_a_different_key_per_evaluation_is_refused(clients, evil, claim_pinned):
    alice, _ = clients("alice"), clients("bob")
    assert alice.lookup([BOB])[0].reachable
    evil.middleware.rewrite["/v1/discovery/evaluate"] = lambda req, ans: _fresh_key_evaluation(
        req, ans, claim_pinned=claim_pinned
    )
    with pytest.raises(errors.SecurityError):
        alice.lookup([BOB])


def test_an_invalid_proof_is_refused(clients, evil):
    alice, _ = clients("alice"), clients("bob")

    def flip(req: dict[str, Any], ans: dict[str, Any]) -> dict[str, Any]:
        proof = bytearray(base64.b64decode(ans["proof"]))
        proof[5] ^= 0x01
        return {**ans, "proof": _b64(bytes(proof))}

    evil.middleware.rewrite["/v1/discovery/evaluate"] = flip
    with pytest.raises(errors.SecurityError):
        alice.lookup([BOB])


def test_an_unsigned_discovery_key_change_is_not_followed(clients, evil, tmp_path):
    """The relay switches to a new VOPRF key signed by a key no client trusts: lookups are
    refused (exit 6 through the CLI), and the pinned key stays."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from imsg.crypto.labels import LABEL_DISCOVERY_KEY
    from imsg.protocol.sealed import relay_key_id

    alice, _ = clients("alice"), clients("bob")
    pinned = alice.store.get_setting("discovery.key")
    sk, pk = imsg_oprf.derive_key_pair(os.urandom(32), b"new", imsg_oprf.MODE_VOPRF)
    rogue = Ed25519PrivateKey.generate()
    rogue_id = relay_key_id(rogue.public_key().public_bytes_raw()).hex()
    evil.middleware.rewrite["/v1/discovery/key"] = lambda req, ans: {
        "public_key": _b64(pk),
        "key_id": discovery.discovery_key_id(pk),
        "signed_by": rogue_id,
        "signature": _b64(rogue.sign(LABEL_DISCOVERY_KEY + pk)),
    }

    def under_new_key(req: dict[str, Any], ans: dict[str, Any]) -> dict[str, Any]:
        from imsg_oprf import voprf

        elements = [base64.b64decode(e) for e in req["elements"]]
        evaluated, proof = voprf.blind_evaluate_batch(sk, pk, elements, os.urandom)
        return {
            **ans,
            "evaluated": [_b64(e) for e in evaluated],
            "proof": _b64(proof),
            "key_id": discovery.discovery_key_id(pk),
        }

    evil.middleware.rewrite["/v1/discovery/evaluate"] = under_new_key
    with pytest.raises(errors.SecurityError) as exc:
        alice.lookup([BOB])
    assert "trust" in str(exc.value)
    assert alice.store.get_setting("discovery.key") == pinned
    home = Path(alice.store.path).parent
    alice.close()
    r = run_imsg(home, "lookup", CAROL, relay=evil.url, json_mode=True, env=clean_env())
    assert r.returncode == 6, r.stderr
    assert json.loads(r.stderr.strip().splitlines()[-1])["error"] == "security"


def test_a_signed_discovery_key_rotation_is_followed(clients, evil):
    """A new VOPRF key the relay's trusted sealed-sender key signed is taken (and pinned)."""
    alice, _ = clients("alice"), clients("bob")
    relay_ctx = evil.app.state.relay
    sealed = relay_ctx.sealed_signing_keys()[-1]
    from imsg_relay.discovery import DiscoveryKey

    old = alice.store.get_setting("discovery.key")
    relay_ctx._discovery_key = DiscoveryKey(os.urandom(32))  # a rotated seed
    assert relay_ctx.discovery_key.signed(sealed)["signed_by"]
    # Handle rows under the old key are gone with it: bob adds his again.
    assert alice.lookup([BOB])[0].reachable is False
    assert alice.store.get_setting("discovery.key") != old


def test_a_repeated_lookup_never_reads_a_longer_prefix(clients, evil):
    """alice first looks bob up at 0 bits (one bucket); the relay then asks for 4-bit
    prefixes: a new handle is read at 4 bits, but bob's lookup reads all 16 sub-buckets of
    his first prefix — the relay learns nothing more about him than the first time."""
    alice, bob = clients("alice"), clients("bob")
    assert alice.lookup([BOB])[0].account_id == bob.whoami().account_id
    assert alice.store.get_setting(f"discovery.bits:{BOB}") == "0"

    evil.middleware.rewrite["/v1/discovery/evaluate"] = lambda req, ans: {**ans, "prefix_bits": 4}
    filler = [{"tag": _b64(os.urandom(32)), "record": _b64(os.urandom(45))} for _ in range(discovery.MIN_BUCKET)]

    def four_bit_buckets(req: dict[str, Any], ans: dict[str, Any]) -> dict[str, Any]:
        return {"prefix_bits": 4, "buckets": [{"prefix": p, "entries": list(filler)} for p in req["prefixes"]]}

    real_entries: list[dict[str, str]] = []

    def answer_from_the_whole_registry(req: dict[str, Any], ans: dict[str, Any]) -> dict[str, Any]:
        out = four_bit_buckets(req, ans)
        for bucket in out["buckets"]:
            bucket["entries"] += [
                e for e in real_entries if discovery.prefix_of(base64.b64decode(e["tag"]), 4) == bucket["prefix"]
            ]
        return out

    # The whole registry, as the relay holds it at 0 bits, to serve 4-bit slices of it.
    with evil.db() as db:
        rows = db.execute("SELECT tag, record FROM handles WHERE state != 'pending'").fetchall()
    real_entries += [{"tag": _b64(t), "record": _b64(r)} for t, r in rows]
    evil.middleware.rewrite["/v1/discovery/buckets"] = answer_from_the_whole_registry
    evil.middleware.clear()
    result = alice.lookup([BOB])[0]
    assert result.account_id == bob.whoami().account_id
    [(authorized, body)] = evil.middleware.requests("/v1/discovery/buckets")
    assert not authorized  # bucket reads carry no credential
    assert body["prefix_bits"] == 4 and sorted(body["prefixes"]) == list(range(16))
    evil.middleware.clear()
    alice.lookup([CAROL])  # never looked up before: one 4-bit prefix
    [(_, body)] = evil.middleware.requests("/v1/discovery/buckets")
    assert len(body["prefixes"]) == 1
    assert alice.store.get_setting(f"discovery.bits:{CAROL}") == "4"
    assert alice.store.get_setting(f"discovery.bits:{BOB}") == "0"


# --- row 4: sends do not look the recipient up again ---


def test_a_send_to_a_pinned_contact_makes_no_lookup(clients, evil):
    alice, bob = clients("alice"), clients("bob")
    alice.send(BOB, "first contact")  # trust on first use: looked up once
    assert [m.text for m in bob.receive()] == ["first contact"]
    evil.middleware.clear()
    alice.send(BOB, "second")
    alice.send(BOB, "third")
    assert evil.middleware.requests("/v1/discovery/evaluate") == []
    assert evil.middleware.requests("/v1/discovery/buckets") == []
    assert [m.text for m in bob.receive()] == ["second", "third"]


def test_background_rechecks_are_padded_with_cover_lookups(clients, evil):
    """The due contacts are checked in a batch of fixed size, real and cover lookups alike,
    and only when due (12-36 h after the last check)."""
    from imsg.client.trust import COVER_BATCH

    alice, bob = clients("alice"), clients("bob")
    before = alice._now()
    alice.send(BOB, "hi")
    due = int(alice.store.get_setting(f"trust.next_check:{bob.whoami().account_id}"))
    assert before + 12 * 3600 * 1000 <= due <= alice._now() + 36 * 3600 * 1000  # a random time 12-36 h on
    evil.middleware.clear()
    alice.receive()  # not due yet
    assert evil.middleware.requests("/v1/discovery/evaluate") == []
    now = alice._now()
    alice._now = lambda: now + 37 * 3600 * 1000
    alice.receive()
    [(authorized, body)] = evil.middleware.requests("/v1/discovery/evaluate")
    assert authorized and len(body["elements"]) == COVER_BATCH
    [(authorized, body)] = evil.middleware.requests("/v1/discovery/buckets")
    assert not authorized and len(body["prefixes"]) >= 1
    evil.middleware.clear()
    alice.receive()  # checked: not due again for at least 12 h
    assert evil.middleware.requests("/v1/discovery/evaluate") == []


# --- row 7: a drained lookup budget does not stop receive ---


def test_a_drained_lookup_budget_never_stops_receive(tmp_path):
    """mallory drains bob's lookup budget by writing from fresh claimed handles; bob still
    receives everything (alice's message included), each unchecked sender reported, and
    the checks complete once the budget is back."""
    from dataclasses import replace

    r = ThreadRelay(relay_settings(tmp_path / "relay-data", discovery_burst=4, discovery_rate=0.001)).start()
    homes = tmp_path / "homes"
    try:
        with (
            Client.open(homes / "alice", relay=r.url) as alice,
            Client.open(homes / "bob", relay=r.url) as bob,
            Client.open(homes / "mallory", relay=r.url) as mallory,
        ):
            alice.init(ALICE)
            bob.init(BOB)
            mallory.init("mallory@example.com")
            sent = []
            for i in range(4):
                account = mallory.store.load_account()
                with mallory.store.transaction():
                    mallory.store.save_account(replace(account, handle=f"+1555010{i:04d}"))
                sent.append(mallory.send(BOB, f"spam {i}").id)
            sent.append(alice.send(BOB, "the real one").id)
            got = bob.receive()  # must not raise 429
            assert "the real one" in [m.text for m in got]
            with r.db() as db:
                assert db.execute("SELECT COUNT(*) FROM envelopes").fetchone()[0] == 0  # all acked
            assert any(p.code == "from_unchecked" for p in bob.problems)
            # bob can still send (to alice, whose handle he knows from her message once checked).
            r.app.state.relay.limits.discovery._events.clear()
            bob.problems.clear()
            bob.receive()
            codes = {p.code for p in bob.problems}
            assert "from_checked" in codes
            assert bob.send(ALICE, "reply").devices == 1
            assert [m.text for m in alice.receive()] == ["reply"]
    finally:
        r.stop()


def test_a_linked_device_takes_the_pinned_key_and_first_prefixes(clients, evil, tmp_path):
    """The welcome (end-to-end encrypted between the account's devices) carries the pinned
    discovery key and each handle's first prefix length."""
    from device_helpers import link_device

    alice, _ = clients("alice"), clients("bob")
    alice.lookup([BOB])
    link_device(evil.url, alice, tmp_path / "homes" / "alice2", "second")
    with Client.open(tmp_path / "homes" / "alice2", relay=evil.url) as alice2:
        assert alice2.store.get_setting("discovery.key") == alice.store.get_setting("discovery.key")
        assert alice2.store.get_setting(f"discovery.bits:{BOB}") == "0"
