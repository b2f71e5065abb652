"""The recording relay's analysis (tests/support/linkage.py) on small hand-made logs and
databases: it must find each kind of join it claims to find, and nothing on a clean log.
The scripted-day test (tests/integration/test_recording_relay.py) trusts these."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from support import linkage
from support.linkage import ACCESS_VERIFIER_LABEL, analyse
from support.recorder import Recorded, RecordingRelay

A, B, C = "aa" * 16, "bb" * 16, "cc" * 16
NAMES = {A: "alice", B: "bob", C: "carol"}
TOKENS = {a: base64.urlsafe_b64encode(bytes([i]) * 32).rstrip(b"=").decode() for i, a in enumerate((A, B, C), 1)}
ADDR = {A: "10.0.0.1", B: "10.0.0.2", C: "10.0.0.3"}
HANDLE = {A: "alice@example.com", B: "bob@example.com", C: "carol@example.com"}
PROXY = "10.9.9.9"
MID = "12" * 16


class Log:
    """A hand-made recording: every request on its own connection unless `peer` says."""

    def __init__(self) -> None:
        self.records: list[Recorded] = []
        self.t = 1000.0
        self.port = 40000

    def add(
        self,
        method: str,
        path: str,
        *,
        by: str | None = None,
        body: object = None,
        address: str = PROXY,
        peer: tuple[str, int] | None = None,
        headers: dict[str, str] | None = None,
        response: object = None,
        dt: float = 0.1,
        ctype: str = "application/json",
    ) -> Recorded:
        self.t += dt
        self.port += 1
        hdrs = [(k.lower(), v) for k, v in (headers or {}).items()]
        if by is not None:
            hdrs.append(("authorization", f"Bearer {TOKENS[by]}"))
        raw = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
        if raw:
            hdrs.append(("content-type", ctype))
        rec = Recorded(
            seq=len(self.records) + 1,
            at=self.t,
            t=self.t,
            method=method,
            path=path,
            query="",
            headers=hdrs,
            body=raw,
            status=200,
            response=json.dumps(response).encode() if response is not None else b"",
            peer=peer or (ADDR[by] if by else address, self.port),
        )
        self.records.append(rec)
        return rec

    def register(self, *accounts: str) -> Log:
        for a in accounts:
            self.add(
                "POST",
                "/v1/accounts",
                body={"account_id": a, "handle": HANDLE[a], "token": TOKENS[a], "device_id": 1},
                address=ADDR[a],
            )
        return self

    def sealed(self, to: str, mid: str = MID, **kw) -> Recorded:
        body = {"message_id": mid, "messages": [{"device_id": 1, "body": "AAAA"}]}
        return self.add("PUT", f"/v1/sealed/messages/{to}", body=body, **kw)

    def findings(self, db=None, **kw) -> list[linkage.Finding]:
        return analyse(self.records, db, names=NAMES, **kw)


def kinds(findings) -> list[str]:
    return sorted({f.kind for f in findings})


def relay_db(tmp_path: Path) -> sqlite3.Connection:
    """An empty database in the relay's own schema."""
    from imsg_relay.storage.sqlite.schema import create

    conn = sqlite3.connect(tmp_path / "relay.db", isolation_level=None)
    create(conn)
    return conn


def test_a_clean_log_has_no_findings():
    log = Log().register(A, B)
    log.add("GET", "/v1/messages", by=A, response={"messages": [], "more": False})
    log.add("GET", f"/v1/accounts/{B}")  # anonymous, through the proxy
    log.add("GET", f"/v1/keys/{B}", headers={"Unidentified-Access-Key": "AAAAAAAAAAAAAAAAAAAAAA=="})
    log.sealed(B)
    log.add("GET", "/v1/messages", by=B)
    log.add("POST", "/v1/messages/ack", by=B, body={"message_ids": [MID]})
    assert log.findings() == []


def test_a_sealed_send_with_a_credential_names_its_sender():
    log = Log().register(A, B)
    log.sealed(B, by=A)
    [f] = log.findings()
    assert (f.kind, f.sender, f.recipient) == ("credential", A, B)
    assert "alice's credential" in f.reason


def test_a_sealed_send_on_a_credentialed_connection_is_joined():
    log = Log().register(A, B)
    conn = (ADDR[A], 5555)
    log.add("GET", "/v1/messages", by=A, peer=conn)
    log.sealed(B, peer=conn)  # keep-alive reuse: same (host, port)
    [f] = log.findings()
    assert (f.kind, f.sender, f.recipient) == ("connection", A, B)
    assert "10.0.0.1:5555" in f.reason


def test_a_sealed_send_from_a_credentialed_address_has_candidates_and_the_proxy_hides_it():
    log = Log().register(A, B)
    log.add("GET", "/v1/messages", by=A)
    log.sealed(B, address=ADDR[A])
    [f] = log.findings()
    assert (f.kind, f.recipient, f.candidates) == ("address", B, (A,))
    proxied = Log().register(A, B)
    proxied.add("GET", "/v1/messages", by=A)
    proxied.sealed(B, address=PROXY)
    assert proxied.findings() == []


@pytest.mark.parametrize(
    "request_",
    [
        ("GET", f"/v1/accounts/{B}", None, {}),
        ("GET", f"/v1/keys/{B}", None, {}),
        ("POST", "/v1/lookup", {"handle": HANDLE[B]}, {}),
        ("GET", f"/v1/keys/{C}", None, {"Unidentified-Access-Key": base64.b64encode(b"k" * 16).decode()}),
        ("GET", f"/v1/profile/{'ef' * 32}/x", None, {}),
    ],
    ids=["account-id", "bundle", "handle", "access-key", "profile-key-id"],
)
def test_a_credentialed_request_naming_the_recipient_is_found(request_):
    method, path, body, headers = request_
    log = Log().register(A, B, C)
    log.add("PUT", "/v1/sealed/access", by=B, body={"access_key": base64.b64encode(b"k" * 16).decode()})
    log.add("PUT", f"/v1/profile/{'ef' * 32}", by=B, body=b"\x01" + b"\0" * 40, ctype="application/octet-stream")
    log.add(method, path, by=A, body=body, headers=headers)
    found = [f for f in log.findings() if f.sender == A]
    assert any(f.kind == "names" and f.recipient == B for f in found), linkage.summary(found)


def test_an_anonymous_request_naming_the_recipient_on_a_credentialed_connection_is_found():
    log = Log().register(A, B)
    conn = (ADDR[A], 7777)
    log.add("POST", "/v1/sealed/certificate", by=A, peer=conn, body={"identity_key": "AA=="})
    log.add("GET", f"/v1/profile/{B}/{'ab' * 32}", peer=conn)
    [f] = log.findings()
    assert (f.kind, f.sender, f.recipient) == ("connection", A, B)


def test_timing_joins_a_credentialed_lookup_to_the_sealed_send_just_after_it():
    log = Log().register(A, B)
    log.add("GET", f"/v1/accounts/{B}", by=A)
    log.sealed(B, address=ADDR[A], dt=0.5)
    found = log.findings()
    assert kinds(found) == ["address", "names", "timing"]
    [timing] = [f for f in found if f.kind == "timing"]
    assert (timing.sender, timing.recipient) == (A, B)
    proxied = Log().register(A, B)
    proxied.add("GET", f"/v1/accounts/{B}", by=A)
    proxied.sealed(B, address=PROXY, dt=0.5)  # a proxy hides the address, not the clock
    assert kinds(proxied.findings()) == ["names", "timing"]
    late = Log().register(A, B)
    late.add("GET", f"/v1/accounts/{B}", by=A)
    late.sealed(B, address=ADDR[A], dt=30)  # outside the window: only the lookup and the address
    assert kinds(late.findings()) == ["address", "names"]


def test_a_blob_uploaded_by_one_and_downloaded_with_anothers_credential_joins_them():
    blob = "0f" * 16
    log = Log().register(A, B)
    log.add("POST", "/v1/blobs", by=A, body={"size": 10}, response={"blob_id": blob, "parts": 1})
    log.add("PUT", f"/v1/blobs/{blob}/parts/0", by=A, body=b"x" * 10, ctype="application/octet-stream")
    log.add("GET", f"/v1/blobs/{blob}", by=B)
    [f] = log.findings()
    assert (f.kind, f.sender, f.recipient) == ("blob", B, A)
    anonymous = Log().register(A, B)
    anonymous.add("POST", "/v1/blobs", by=A, body={"size": 10}, response={"blob_id": blob, "parts": 1})
    anonymous.add("GET", f"/v1/blobs/{blob}")
    assert anonymous.findings() == []


def test_a_blob_known_only_from_the_database_is_joined_too(tmp_path):
    blob = "0e" * 16
    db = relay_db(tmp_path)
    db.execute("INSERT INTO blobs (blob_id, account_id, size, part_size, created_at) VALUES (?, ?, 1, 1, 0)", (blob, A))
    log = Log().register(A, B)
    log.add("GET", f"/v1/blobs/{blob}", by=B)
    assert [(f.kind, f.recipient) for f in log.findings(db)] == [("blob", A)]


def test_a_message_id_shared_with_the_senders_own_copy_names_the_sender(tmp_path):
    log = Log().register(A, B)
    log.sealed(B, mid=MID)
    log.add("PUT", f"/v1/messages/{A}", by=A, body={"message_id": MID, "messages": []})  # the old sync copy
    [f] = log.findings()
    assert (f.kind, f.sender, f.recipient) == ("message_id", A, B)
    # the same from the database alone: a row in alice's own mailbox under that id
    db = relay_db(tmp_path)
    db.execute(
        "INSERT INTO envelopes (account_id, device_id, message_id, body, received_at) VALUES (?, 2, ?, ?, 0)",
        (A, MID, b"\x01\x02" + b"\0" * 40),
    )
    only_db = Log().register(A, B)
    only_db.sealed(B, mid=MID)
    [f] = only_db.findings(db)
    assert (f.kind, f.sender) == ("message_id", A) and "envelopes table" in f.reason
    # and an ack of that id by alice's other device
    acked = Log().register(A, B)
    acked.sealed(B, mid=MID)
    acked.add("POST", "/v1/messages/ack", by=A, body={"message_ids": [MID]})
    assert [(f.kind, f.sender) for f in acked.findings()] == [("message_id", A)]


def test_an_identified_send_and_its_bundle_fetch_are_the_visible_fallback():
    log = Log().register(A, B)
    log.add("GET", f"/v1/keys/{B}", by=A)
    log.add("PUT", f"/v1/messages/{B}", by=A, body={"message_id": "34" * 16, "messages": []})
    assert [(f.kind, f.sender, f.recipient) for f in log.findings()] == [("identified", A, B)] * 2
    # a credentialed bundle fetch with no identified send after it is a plain violation
    alone = Log().register(A, B)
    alone.add("GET", f"/v1/keys/{B}", by=A)
    assert kinds(alone.findings()) == ["names"]


def test_an_identified_envelope_in_the_database_names_its_sender(tmp_path):
    db = relay_db(tmp_path)
    body = bytes([1, 1]) + bytes.fromhex(A) + (1).to_bytes(4, "big") + b"\0" * 30
    db.execute(
        "INSERT INTO envelopes (account_id, device_id, message_id, body, received_at) VALUES (?, 1, ?, ?, 0)",
        (B, "56" * 16, body),
    )
    [f] = Log().findings(db)
    assert (f.kind, f.sender, f.recipient, f.seq) == ("identified", A, B, None)


def test_tokens_come_from_the_database_too(tmp_path):
    """No registration in the log: the devices table's token hashes still name the caller."""
    db = relay_db(tmp_path)
    for a in (A, B):
        db.execute("INSERT INTO accounts VALUES (?, x'00', x'00', 0)", (a,))
        raw = base64.urlsafe_b64decode(TOKENS[a] + "=")
        db.execute("INSERT INTO devices VALUES (?, 1, ?, 0)", (a, hashlib.sha256(raw).digest()))
    log = Log()
    log.add("GET", f"/v1/accounts/{B}", by=A)
    [f] = log.findings(db)
    assert (f.kind, f.sender, f.recipient) == ("names", A, B)


def test_access_keys_from_the_database_are_recognised(tmp_path):
    db = relay_db(tmp_path)
    key = b"q" * 16
    db.execute("INSERT INTO sealed_access VALUES (?, ?, 0)", (B, hashlib.sha256(ACCESS_VERIFIER_LABEL + key).digest()))
    log = Log().register(A, B)
    log.add("GET", "/v1/keys/count", by=A, headers={"Unidentified-Access-Key": base64.b64encode(key).decode()})
    assert [(f.kind, f.recipient) for f in log.findings(db)] == [("names", B)]


def test_a_credentialed_bucket_read_narrows(tmp_path):
    db = relay_db(tmp_path)
    db.execute(
        "INSERT INTO handles (tag, account_id, bucket, state, label, record, created_at)"
        " VALUES (x'01', ?, ?, 'verified', x'', x'', 0)",
        (B, 0xABCD),
    )
    log = Log().register(A, B)
    log.add("POST", "/v1/discovery/buckets", by=A, body={"prefix_bits": 8, "prefixes": [0xAB]})
    [f] = log.findings(db)
    assert (f.kind, f.sender, f.candidates) == ("narrows", A, (B,))
    anonymous = Log().register(A, B)
    anonymous.add("POST", "/v1/discovery/buckets", body={"prefix_bits": 8, "prefixes": [0xAB]})
    assert anonymous.findings(db) == []


def test_the_log_survives_a_dump_and_a_load(tmp_path):
    log = Log().register(A)
    log.sealed(B, headers={"Unidentified-Access-Key": "AAAA"})
    rr = RecordingRelay(app=None)
    rr.log.extend(log.records)
    rr.dump(tmp_path / "log.jsonl")
    assert RecordingRelay.load(tmp_path / "log.jsonl") == log.records


def test_the_summary_counts_kinds():
    log = Log().register(A, B)
    log.sealed(B, by=A)
    log.add("GET", f"/v1/accounts/{B}", by=A)
    text = linkage.summary(log.findings())
    assert text.splitlines()[0] == "credential 1, names 1"
    assert linkage.summary([]) == "no findings"


def test_a_sealed_attempt_between_the_fallbacks_bundle_fetch_and_send_is_part_of_the_fallback():
    """A first contact: prekeys fetched with the credential, a sealed try without a key
    (refused), then the identified send. The try's closeness to the fetch is the fallback's
    visible cost (identified), not a timing leak of its own."""
    log = Log().register(A, B)
    log.add("GET", f"/v1/keys/{B}", by=A)
    log.sealed(B, address=ADDR[A]).status = 401
    log.add("PUT", f"/v1/messages/{B}", by=A, body={"message_id": MID, "messages": []})
    found = log.findings()
    assert kinds(found) == ["address", "identified"], linkage.summary(found)
    # had the relay stored it (200), the same id would have been a message-id join
    log.records[-2].status = 200
    assert "message_id" in kinds(log.findings())


def test_an_unauthenticated_request_naming_two_accounts_joins_them():
    log = Log().register(A, B)
    log.add("PUT", "/v1/sealed/access", by=A, body={"access_key": base64.b64encode(b"a" * 16).decode()})
    # a sealed send to bob that carries alice's own access key: no credential, still a join
    log.sealed(B, headers={"Unidentified-Access-Key": base64.b64encode(b"a" * 16).decode()})
    [f] = log.findings()
    assert (f.kind, f.sender, f.recipient) == ("names", A, B) and "access key" in f.reason
    # a sealed copy to one's own account with one's own key names one account: nothing
    own = Log().register(A, B)
    own.add("PUT", "/v1/sealed/access", by=A, body={"access_key": base64.b64encode(b"a" * 16).decode()})
    own.sealed(A, headers={"Unidentified-Access-Key": base64.b64encode(b"a" * 16).decode()})
    assert own.findings() == []
