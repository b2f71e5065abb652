"""Reachable handles at the relay: verification codes through real verifiers (a file, an
SMTP server on loopback, an HTTP SMS gateway on loopback), their rules (6 digits, single
use, 10-minute expiry, 5 wrong tries, rate limits), claims without a verifier, and private
discovery: what a lookup leaves behind (nothing) and its per-account budget."""

from __future__ import annotations

import base64
import json
import os
import re
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from starlette.testclient import TestClient

from imsg_relay.app import create_app

from .helpers import b64, new_identity, private_lookup, register, registration
from support.relays import relay_settings

CODE = re.compile(r"\b(\d{6})\b")


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


def _label() -> str:
    return b64(os.urandom(60))


def codes_in(path) -> list[tuple[str, str]]:
    return [tuple(line.split()) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def file_relay(tmp_path):
    codes = tmp_path / "codes.txt"
    clock = Clock()
    with TestClient(create_app(relay_settings(tmp_path / "data", verifier=f"file:{codes}"), clock=clock)) as c:
        yield c, codes, clock


def test_file_verifier_code_single_use_and_verified_handle_is_discoverable(file_relay):
    c, codes, _ = file_relay
    alice, bob = register(c), register(c)
    r = c.post("/v1/handles", json={"handle": "+15551230001", "label": _label()}, headers=alice.headers())
    assert r.status_code == 200 and r.json()["state"] == "pending"
    [(handle, code)] = [x for x in codes_in(codes) if x[0] == "+15551230001"]
    assert len(code) == 6 and code.isdigit()
    assert private_lookup(c, bob, handle) is None  # pending: not discoverable
    r = c.post("/v1/handles/verify", json={"handle": handle, "code": code}, headers=alice.headers())
    assert r.status_code == 200 and r.json()["state"] == "verified"
    assert private_lookup(c, bob, handle) == alice.account_id
    # single use: the code is gone; verifying again just answers the verified row
    r = c.post("/v1/handles/verify", json={"handle": handle, "code": code}, headers=alice.headers())
    assert r.status_code == 200 and r.json()["state"] == "verified"
    rows = c.get("/v1/handles", headers=alice.headers()).json()["handles"]
    states = sorted(h["state"] for h in rows)
    assert states == ["pending", "verified"]  # the registration handle is pending too


def test_registration_under_a_verifier_is_pending_and_gets_a_code(file_relay):
    c, codes, _ = file_relay
    ident = new_identity("carol@example.com")
    r = c.post("/v1/accounts", json=registration(ident))
    assert r.status_code == 201 and r.json()["handle_state"] == "pending"
    assert [h for h, _ in codes_in(codes)] == ["carol@example.com"]
    assert r.json()["code_sent"] is True


def test_wrong_codes_void_the_code_after_five(file_relay):
    c, codes, _ = file_relay
    alice = register(c)
    c.post("/v1/handles", json={"handle": "+15551230002", "label": _label()}, headers=alice.headers())
    code = codes_in(codes)[-1][1]
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    lefts = []
    for _ in range(5):
        r = c.post("/v1/handles/verify", json={"handle": "+15551230002", "code": wrong}, headers=alice.headers())
        assert r.status_code == 403 and r.json()["error"] == "wrong_code"
        lefts.append(r.json()["tries_left"])
    assert lefts == [4, 3, 2, 1, 0]
    r = c.post("/v1/handles/verify", json={"handle": "+15551230002", "code": code}, headers=alice.headers())
    assert r.status_code == 409 and r.json()["error"] == "no_code"  # even the right code is void now


def test_code_expires_after_ten_minutes(file_relay):
    c, codes, clock = file_relay
    alice = register(c)
    c.post("/v1/handles", json={"handle": "+15551230003", "label": _label()}, headers=alice.headers())
    code = codes_in(codes)[-1][1]
    clock.t += 600.5
    r = c.post("/v1/handles/verify", json={"handle": "+15551230003", "code": code}, headers=alice.headers())
    assert r.status_code == 409 and r.json()["error"] == "no_code"


@pytest.mark.parametrize("code", ["12345", "1234567", "abcdef", "12 456"])
def test_malformed_codes_are_400(file_relay, code):
    c, _, _ = file_relay
    alice = register(c)
    r = c.post("/v1/handles/verify", json={"handle": "+15551230004", "code": code}, headers=alice.headers())
    assert r.status_code == 400


def test_codes_are_stored_only_hashed(file_relay, tmp_path):
    c, codes, _ = file_relay
    alice = register(c)
    c.post("/v1/handles", json={"handle": "dave@example.com", "label": _label()}, headers=alice.headers())
    code = codes_in(codes)[-1][1]
    dump = _dump_sqlite(tmp_path / "data" / "relay.db")
    assert code.encode() not in dump and b"dave@example.com" not in dump


def test_codes_are_rate_limited_per_handle_and_per_account(tmp_path):
    codes = tmp_path / "codes.txt"
    settings = relay_settings(
        tmp_path / "data",
        verifier=f"file:{codes}",
        code_handle_burst=2,
        code_handle_rate=2 / 3600,
        code_account_burst=4,
        code_account_rate=4 / 3600,
    )
    with TestClient(create_app(settings)) as c:
        alice, bob = register(c), register(c)
        add = lambda who, h: c.post("/v1/handles", json={"handle": h, "label": _label()}, headers=who.headers())  # noqa: E731
        assert [add(alice, "+15551230005").status_code for _ in range(3)] == [200, 200, 429]
        assert add(bob, "+15551230005").status_code == 429  # per handle, whoever asks
        assert add(alice, "+15551230006").status_code == 200
        r = add(alice, "+15551230007")  # alice's fifth code this hour (one went to her registration handle)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0


def test_no_verifier_claims_unverified_first_come(tmp_path):
    with TestClient(create_app(relay_settings(tmp_path / "data"))) as c:
        alice, bob = register(c, "alice@example.com"), register(c)
        rows = c.get("/v1/handles", headers=alice.headers()).json()["handles"]
        assert [h["state"] for h in rows] == ["unverified"]
        r = c.post("/v1/handles", json={"handle": "alice@example.com", "label": _label()}, headers=bob.headers())
        assert r.status_code == 409 and r.json()["error"] == "handle_taken"
        assert private_lookup(c, bob, "alice@example.com") == alice.account_id


def test_verification_moves_a_handle_to_whoever_proves_it(file_relay):
    c, codes, _ = file_relay
    alice, bob, carol = register(c), register(c), register(c)
    for who in (alice, bob):
        c.post("/v1/handles", json={"handle": "+15551230008", "label": _label()}, headers=who.headers())
        code = codes_in(codes)[-1][1]
        assert (
            c.post(
                "/v1/handles/verify", json={"handle": "+15551230008", "code": code}, headers=who.headers()
            ).status_code
            == 200
        )
    assert private_lookup(c, carol, "+15551230008") == bob.account_id  # a recycled number
    assert c.get("/v1/handles", headers=alice.headers()).json()["handles"][-1]["state"] == "pending"


def test_receive_off_hides_the_handle_and_remove_deletes_it(tmp_path):
    with TestClient(create_app(relay_settings(tmp_path / "data"))) as c:
        alice, bob = register(c, "alice@example.com"), register(c)
        [row] = c.get("/v1/handles", headers=alice.headers()).json()["handles"]
        r = c.patch(f"/v1/handles/{row['id']}", json={"receiving": False}, headers=alice.headers())
        assert r.status_code == 200 and r.json()["receiving"] is False
        assert private_lookup(c, bob, "alice@example.com") is None
        c.patch(f"/v1/handles/{row['id']}", json={"receiving": True}, headers=alice.headers())
        assert private_lookup(c, bob, "alice@example.com") == alice.account_id
        assert c.delete(f"/v1/handles/{row['id']}", headers=bob.headers()).status_code == 404  # not bob's
        assert c.delete(f"/v1/handles/{row['id']}", headers=alice.headers()).status_code == 200
        assert private_lookup(c, bob, "alice@example.com") is None
        assert c.get("/v1/handles", headers=alice.headers()).json() == {"handles": []}


def test_evaluations_are_rate_limited_per_account_and_checked(tmp_path):
    settings = relay_settings(tmp_path / "data", discovery_burst=5, discovery_rate=0.001)
    with TestClient(create_app(settings)) as c:
        alice = register(c)
        el = b64(bytes.fromhex("609a0ae68c15a3cf6903766461307e5c8bb2f95e7e6550e1ffa2dc99e412803c"))
        assert c.post("/v1/discovery/evaluate", json={"elements": [el] * 5}, headers=alice.headers()).status_code == 200
        r = c.post("/v1/discovery/evaluate", json={"elements": [el]}, headers=alice.headers())
        assert r.status_code == 429 and r.json()["error"] == "rate_limited"
        bob = register(c)
        for bad in (b64(bytes(32)), b64(b"\xff" * 32), b64(b"\x01" * 31)):
            r = c.post("/v1/discovery/evaluate", json={"elements": [bad]}, headers=bob.headers())
            assert r.status_code == 400, bad
        assert c.post("/v1/discovery/evaluate", json={"elements": []}, headers=bob.headers()).status_code == 400
        r = c.post("/v1/discovery/buckets", json={"prefix_bits": 3, "prefixes": [0]}, headers=bob.headers())
        assert r.status_code == 409 and r.json() == {**r.json(), "error": "prefix_bits_changed", "prefix_bits": 0}


def _dump_sqlite(path) -> bytes:
    """Every value of every row of every table, and the raw files (WAL included)."""
    out = []
    with sqlite3.connect(path) as db:
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            for row in db.execute(f"SELECT * FROM {table}"):
                out.append(repr(row).encode())
    for suffix in ("", "-wal", "-shm"):
        p = path.parent / (path.name + suffix)
        if p.exists():
            out.append(p.read_bytes())
    return b"\n".join(out)


def traces_of(handle: str, data_dir) -> list[bytes]:
    """The handle, its OPRF output, its tag, and their encodings: none may appear."""
    from imsg_relay.discovery import DiscoveryKey, tag_for

    output = DiscoveryKey.load(data_dir / "discovery.key").output(handle)
    tag = tag_for(output)
    return [
        handle.encode(),
        output,
        tag,
        output.hex().encode(),
        tag.hex().encode(),
        base64.b64encode(tag),
        base64.b64encode(output),
    ]


def test_lookups_leave_no_trace_in_database_or_log(tmp_path):
    """A lookup writes nothing: after many lookups of handles nobody holds, the database
    and the relay's log hold no trace of them (nor of the one registered handle looked up,
    beyond its row), and no table changed."""
    import httpx

    from support.relays import ProcessRelay

    data = tmp_path / "data"
    log_path = tmp_path / "relay.log"
    relay = ProcessRelay(
        data, log_path=log_path, env={"IMSG_RELAY_DISCOVERY_BURST": "100000", "IMSG_RELAY_DISCOVERY_RATE": "100000"}
    ).start()
    looked_up = ["+15559990001", "zed@example.com", "+442079460958"]
    try:
        with httpx.Client(base_url=relay.url, timeout=10) as c:
            register(c, "alice@example.com")
            bob = register(c)
            before = _table_counts(data / "relay.db")
            for h in looked_up * 3 + ["alice@example.com"]:
                private_lookup(c, bob, h)
            c.post("/v1/discovery/evaluate", json={"elements": [b64(bytes(32))]}, headers=bob.headers())
            after = _table_counts(data / "relay.db")
    finally:
        assert relay.terminate() == 0
    assert before == after  # no row written anywhere by a lookup
    dump = _dump_sqlite(data / "relay.db") + log_path.read_bytes()
    for h in looked_up:
        for trace in traces_of(h, data):
            assert trace not in dump, (h, trace)
    assert b"alice@example.com" not in dump
    assert bob.account_id.encode() not in log_path.read_bytes()


def _table_counts(path) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        return {
            t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }


# --- real delivery: SMTP and an SMS gateway on loopback ---


def test_smtp_verifier_delivers_the_code_to_a_real_smtp_server(tmp_path):
    from aiosmtpd.controller import Controller

    got: list[tuple[list[str], str]] = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            got.append((list(envelope.rcpt_tos), envelope.content.decode()))
            return "250 OK"

    port = _free_port()
    smtp = Controller(Handler(), hostname="127.0.0.1", port=port)
    smtp.start()
    try:
        settings = relay_settings(
            tmp_path / "data",
            verifier="smtp",
            smtp_host="127.0.0.1",
            smtp_port=port,
            smtp_tls="none",
            smtp_from="imsg <codes@relay.test>",
        )
        with TestClient(create_app(settings)) as c:
            alice, bob = register(c), register(c)
            r = c.post("/v1/handles", json={"handle": "erin@example.com", "label": _label()}, headers=alice.headers())
            assert r.status_code == 200
            [(rcpt, body)] = [g for g in got if g[0] == ["erin@example.com"]]
            code = CODE.search(body).group(1)
            assert (
                c.post(
                    "/v1/handles/verify", json={"handle": "erin@example.com", "code": code}, headers=alice.headers()
                ).json()["state"]
                == "verified"
            )
            assert private_lookup(c, bob, "erin@example.com") == alice.account_id
            # an smtp relay cannot text a phone number: a clear refusal, nothing sent
            r = c.post("/v1/handles", json={"handle": "+15551230009", "label": _label()}, headers=alice.headers())
            assert r.status_code == 502 and r.json()["error"] == "verifier_failed"
    finally:
        smtp.stop()


def _free_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_smtp_server_down_is_502(tmp_path):
    port = _free_port()  # nothing listens there
    settings = relay_settings(
        tmp_path / "data", verifier="smtp", smtp_host="127.0.0.1", smtp_port=port, smtp_tls="none"
    )
    with TestClient(create_app(settings)) as c:
        alice = register(c)
        r = c.post("/v1/handles", json={"handle": "erin@example.com", "label": _label()}, headers=alice.headers())
        assert r.status_code == 502 and r.json()["error"] == "verifier_failed"


class _Gateway:
    """A local HTTP server standing in for an SMS gateway: records every POST, answers 202."""

    def __enter__(self) -> _Gateway:
        got = self.got = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                got.append((self.path, dict(self.headers), body))
                self.send_response(202)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_sms_webhook_posts_the_template_to_the_gateway(tmp_path):
    with _Gateway() as gw:
        url = gw.url + "/send?key=k"
        settings = relay_settings(
            tmp_path / "data",
            verifier="sms-webhook",
            webhook_url=url,
            webhook_template='{"to": "{handle}", "message": "code {code}"}',
            webhook_authorization="Bearer gw-secret",
        )
        assert "gw-secret" not in repr(settings) and "key=k" not in repr(settings)
        with TestClient(create_app(settings)) as c:
            alice, bob = register(c), register(c)
            r = c.post("/v1/handles", json={"handle": "+15551230010", "label": _label()}, headers=alice.headers())
            assert r.status_code == 200
            [(path, headers, body)] = gw.got  # the e-mail registrations got no text
            doc = json.loads(body)
            assert path == "/send?key=k" and headers["Authorization"] == "Bearer gw-secret"
            assert doc["to"] == "+15551230010"
            code = CODE.search(doc["message"]).group(1)
            assert (
                c.post(
                    "/v1/handles/verify", json={"handle": "+15551230010", "code": code}, headers=alice.headers()
                ).status_code
                == 200
            )
            assert private_lookup(c, bob, "+15551230010") == alice.account_id


def test_a_relay_process_logs_neither_handles_codes_nor_the_gateway_key(tmp_path):
    import httpx

    from support.relays import ProcessRelay

    log_path = tmp_path / "relay.log"
    with _Gateway() as gw:
        relay = ProcessRelay(
            tmp_path / "data",
            log_path=log_path,
            env={"IMSG_RELAY_VERIFIER": "sms-webhook", "IMSG_RELAY_WEBHOOK_URL": gw.url + "/send?key=GWSECRET42"},
        ).start()
        try:
            with httpx.Client(base_url=relay.url, timeout=10) as c:
                alice = register(c)  # an e-mail handle: this gateway cannot deliver it (logged, no handle)
                c.post("/v1/handles", json={"handle": "+15551230011", "label": _label()}, headers=alice.headers())
                code = CODE.search(json.loads(gw.got[-1][2])["text"]).group(1)
                c.post("/v1/handles/verify", json={"handle": "+15551230011", "code": "000000"}, headers=alice.headers())
                c.post("/v1/handles/verify", json={"handle": "+15551230011", "code": code}, headers=alice.headers())
        finally:
            assert relay.terminate() == 0
    log = log_path.read_bytes()
    assert b"not delivered" in log  # the failure is logged, without what it was about
    for secret in (b"GWSECRET42", b"+15551230011", b"15551230011", alice.handle.encode(), code.encode()):
        assert secret not in log, secret
