"""What a relay operator who records every request can join (issue 12's adversary).

Given a RecordingRelay log (tests/support/recorder.py) and the relay's SQLite database, this
finds every way the operator could tie a sealed send — `PUT /v1/sealed/messages/{R}`, which
carries no credential — to its sender, or tie two accounts together as correspondents:

kind          what joins
------------  -----------------------------------------------------------------------------
credential    the sealed send itself carried a Bearer token
connection    a request (sealed send, or one naming R) went on a TCP connection (peer host
              and port, and the server's serial of the connection when it is recorded) that
              carried some account's credential in another request
names         a credentialed request of S names R: R's account id, R's plaintext handle, R's
              unidentified-access key, R's profile key id (path, query, JSON body); or an
              unauthenticated one names two accounts (a sealed send to R carrying S's key)
blob          a credentialed request of D names a blob that S uploaded (S and D are joined)
message_id    one message id went to R sealed and also belongs to S: S's identified send,
              S's own mailbox row (a sync copy under the same id), S's ack or fetch of it
narrows       a credentialed discovery bucket read of S (`POST /v1/discovery/buckets` with a
              prefix): it narrows S's lookup to the accounts whose handles are in those buckets
timing        a credentialed request of S naming R at most `window` seconds before a sealed
              send to R (from any address: a proxy hides the address, not the clock)
identified    the visible fallback: S's identified send to R (the request, or an envelope
              row in R's mailbox whose body names S), the credentialed bundle fetch right
              before it, sealed sends to R within `window` after either, and a
              refused (401) sealed try whose message id S then sends identified (outside a
              first contact, that is the forged-401 downgrade)
address       the request came from a source address that also carried credentials: the
              candidates are every account seen credentialed from it (a proxy hides this)

The operator knows who owns what from the requests themselves and its own tables: tokens
(registration and device-add bodies; SHA-256 of the token in `devices`), backup access
tokens (`backups.access_hash`), profile key ids (`PUT /v1/profile/{key_id}`; `profiles`),
blobs (`POST /v1/blobs` answers, part uploads; `blobs.account_id`), handles (registration
and claim bodies), access keys (`PUT /v1/sealed/access`; `sealed_access` verifiers).

A join of an account with itself is not reported, except that a sealed send must never be
attributable at all (a sealed copy to one's own devices that carries a credential tells
the operator who sent the message it accompanies).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import sqlite3
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from support.recorder import Recorded

CREDENTIAL, CONNECTION, ADDRESS = "credential", "connection", "address"
NAMES, BLOB, MESSAGE_ID, TIMING, IDENTIFIED = "names", "blob", "message_id", "timing", "identified"
NARROWS = "narrows"
KINDS = (CREDENTIAL, CONNECTION, NAMES, BLOB, MESSAGE_ID, NARROWS, TIMING, IDENTIFIED, ADDRESS)

# The relay's own constants, repeated so that this adversary reads the wire as documented
# (docs/RELAY-API.md, PROTOCOL.md) rather than through the relay's code.
ACCESS_VERIFIER_LABEL = b"imsg/v1/sealed/access-verifier"
KIND_IDENTIFIED_ENVELOPE = 0x01
SEALED_PATH = re.compile(r"^/v1/sealed/messages/([0-9a-f]{32})$")
IDENTIFIED_PATH = re.compile(r"^/v1/messages/([0-9a-f]{32})$")
KEYS_PATH = re.compile(r"^/v1/keys/([0-9a-f]{32})$")
BLOB_PATH = re.compile(r"^/v1/blobs/([0-9a-f]{32})(/.*)?$")
PROFILE_PUT_PATH = re.compile(r"^/v1/profile/([0-9a-f]{64})$")
DEVICE_PUT_PATH = re.compile(r"^/v1/(?:restore/)?devices/(\d+)$")
HEX32 = re.compile(r"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])")
HEX64 = re.compile(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")
SEARCHED_BODY_MAX = 1 << 20  # octet-stream bodies (blob parts, profiles, backups) are ciphertext


@dataclass(frozen=True)
class Finding:
    """One join the operator can make. `sender` is the account the operator would name as
    the sender (or one side of a pair), `recipient` the other; `seq` the log record it rests
    on (None for a database row alone); `candidates` for an address join: every account
    seen credentialed from that address; `related` the other request of a join of two."""

    kind: str
    reason: str
    sender: str | None = None
    recipient: str | None = None
    seq: int | None = None
    candidates: tuple[str, ...] = ()
    related: int | None = None  # the other request of a two-request join (timing, message id)

    def __str__(self) -> str:
        where = f" [request {self.seq}]" if self.seq is not None else ""
        return f"{self.kind}: {self.reason}{where}"


def token_bytes(text: str) -> bytes | None:
    """A base64url token (no padding) as its bytes, or None."""
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@dataclass
class Knowledge:
    """What the operator knows about who owns what."""

    accounts: set[str] = field(default_factory=set)
    token_hashes: dict[bytes, str] = field(default_factory=dict)  # SHA-256(token) -> account
    handles: dict[str, str] = field(default_factory=dict)  # plaintext handle -> account
    profile_keys: dict[str, str] = field(default_factory=dict)  # key id hex -> account
    blobs: dict[str, str] = field(default_factory=dict)  # blob id -> uploading account
    verifiers: dict[bytes, str] = field(default_factory=dict)  # access-key verifier -> account
    names: dict[str, str] = field(default_factory=dict)  # short labels for reasons

    def label(self, account: str | None) -> str:
        if account is None:
            return "?"
        return self.names.get(account, account[:8])


class Analysis:
    """The analysis of one log and one relay database. `findings()` lists every join."""

    def __init__(
        self,
        records: Iterable[Recorded],
        db: sqlite3.Connection | str | Path | None = None,
        *,
        window: float = 5.0,
        names: dict[str, str] | None = None,
    ) -> None:
        self.records = sorted(records, key=lambda r: r.seq)
        self.window = window
        self.k = Knowledge(names=dict(names or {}))
        self.rows: list[tuple[str, int, str, bytes]] = []  # envelopes: account, device, message id, body
        self.buckets: list[tuple[int, str]] = []  # handles: (first 16 bits of the tag, account)
        if db is not None:
            self._read_db(db)
        self._read_log()
        self.cred: dict[int, str] = {}
        for r in self.records:
            who = self.account_of(r)
            if who is not None:
                self.cred[r.seq] = who
        self.by_connection: dict[tuple[str, int, int], set[str]] = defaultdict(set)
        self.by_address: dict[str, set[str]] = defaultdict(set)
        for r in self.records:
            if r.seq in self.cred:
                self.by_connection[r.connection_key].add(self.cred[r.seq])
                self.by_address[r.address].add(self.cred[r.seq])

    # --- what the operator knows ---

    def _read_db(self, db: sqlite3.Connection | str | Path) -> None:
        conn = db if isinstance(db, sqlite3.Connection) else sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            tables = {t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

            def rows(table: str, query: str) -> list[tuple]:
                return list(conn.execute(query)) if table in tables else []

            for (a,) in rows("accounts", "SELECT account_id FROM accounts"):
                self.k.accounts.add(a)
            for a, h in rows("devices", "SELECT account_id, token_hash FROM devices"):
                self.k.token_hashes[bytes(h)] = a
            for a, h in rows("backups", "SELECT account_id, access_hash FROM backups"):
                self.k.token_hashes[bytes(h)] = a
            for a, key_id in rows("profiles", "SELECT account_id, key_id FROM profiles"):
                self.k.profile_keys[bytes(key_id).hex()] = a
            for b, a in rows("blobs", "SELECT blob_id, account_id FROM blobs"):
                self.k.blobs[b] = a
            for a, v in rows("sealed_access", "SELECT account_id, access_verifier FROM sealed_access"):
                if v is not None:
                    self.k.verifiers[bytes(v)] = a
            self.buckets = [
                (int(b), a)
                for b, a in rows("handles", "SELECT bucket, account_id FROM handles WHERE state != 'pending'")
            ]
            self.rows = [
                (a, d, m, bytes(b))
                for a, d, m, b in rows("envelopes", "SELECT account_id, device_id, message_id, body FROM envelopes")
            ]
        finally:
            if conn is not db:
                conn.close()

    def account_of(self, r: Recorded) -> str | None:
        """The account whose credential (device token or backup access token) `r` carries."""
        token = r.bearer
        raw = token_bytes(token) if token else None
        return self.k.token_hashes.get(sha256(raw)) if raw else None

    def _read_log(self) -> None:
        # Registrations first: later requests are attributed through these tokens.
        for r in self.records:
            body = r.json()
            if r.method == "POST" and r.path == "/v1/accounts" and isinstance(body, dict):
                account = str(body.get("account_id", ""))
                self.k.accounts.add(account)
                raw = token_bytes(str(body.get("token", "")))
                if raw:
                    self.k.token_hashes[sha256(raw)] = account
                if isinstance(body.get("handle"), str):
                    self.k.handles[body["handle"]] = account
            who = self.account_of(r)
            if who is None:
                continue
            if r.method == "PUT" and DEVICE_PUT_PATH.match(r.path) and isinstance(body, dict):
                raw = token_bytes(str(body.get("token", "")))
                if raw:
                    self.k.token_hashes[sha256(raw)] = who
            elif r.method == "POST" and r.path == "/v1/handles" and isinstance(body, dict):
                if isinstance(body.get("handle"), str):
                    self.k.handles[body["handle"]] = who
            elif r.method == "PUT" and r.path == "/v1/sealed/access" and isinstance(body, dict):
                key = body.get("access_key")
                if isinstance(key, str):
                    self.k.verifiers[sha256(ACCESS_VERIFIER_LABEL + base64.b64decode(key))] = who
            elif r.method == "PUT" and (m := PROFILE_PUT_PATH.match(r.path)):
                self.k.profile_keys[m.group(1)] = who
            elif r.method == "POST" and r.path == "/v1/blobs":
                answer = r.response_json()
                if isinstance(answer, dict) and isinstance(answer.get("blob_id"), str):
                    self.k.blobs[answer["blob_id"]] = who
            elif (m := BLOB_PATH.match(r.path)) and r.method in ("PUT", "POST", "DELETE"):
                self.k.blobs.setdefault(m.group(1), who)

    # --- what a request names ---

    def _text(self, r: Recorded) -> str:
        text = r.path + "?" + r.query
        ctype = (r.header("content-type") or "").lower()
        if r.body and "octet-stream" not in ctype and len(r.body) <= SEARCHED_BODY_MAX:
            text += "\n" + r.body.decode("latin-1")
        return text

    def named(self, r: Recorded) -> dict[str, tuple[str, str]]:
        """account -> (how, what): every account `r` names or narrows to, and how."""
        out: dict[str, tuple[str, str]] = {}
        text = self._text(r)
        for m in HEX32.finditer(text):
            v = m.group(0)
            if v in self.k.accounts:
                out.setdefault(v, (NAMES, f"its account id {v[:8]}"))
            elif v in self.k.blobs:
                out.setdefault(self.k.blobs[v], (BLOB, f"blob {v[:8]} it uploaded"))
        for m in HEX64.finditer(text):
            if m.group(0) in self.k.profile_keys:
                out.setdefault(self.k.profile_keys[m.group(0)], (NAMES, f"its profile key id {m.group(0)[:8]}"))
        for handle, account in self.k.handles.items():
            if handle and handle in text:
                out.setdefault(account, (NAMES, f"its handle {handle}"))
        key = r.header("unidentified-access-key")
        if key:
            try:
                verifier = sha256(ACCESS_VERIFIER_LABEL + base64.b64decode(key))
            except (binascii.Error, ValueError):
                verifier = b""
            if verifier in self.k.verifiers:
                out.setdefault(self.k.verifiers[verifier], (NAMES, "its unidentified-access key"))
        return out

    # --- the joins ---

    def findings(self) -> list[Finding]:
        out: list[Finding] = []
        identified_sends: list[tuple[Recorded, str, str]] = []  # (request, sender, recipient)
        for r in self.records:
            m = IDENTIFIED_PATH.match(r.path)
            if r.method == "PUT" and m and r.seq in self.cred and self.cred[r.seq] != m.group(1):
                identified_sends.append((r, self.cred[r.seq], m.group(1)))
        naming: list[tuple[Recorded, str, str, str, str]] = []  # (request, by, named, how, what)
        for r in self.records:
            sealed = SEALED_PATH.match(r.path) if r.method == "PUT" else None
            if r.seq not in self.cred:
                out.extend(self._names_two(r, sealed.group(1) if sealed else None))
            if sealed:
                out.extend(self._sealed(r, sealed.group(1)))
                continue
            if r.method == "POST" and r.path == "/v1/discovery/buckets" and r.seq in self.cred:
                out.extend(self._narrows(r))
            for account, (how, what) in self.named(r).items():
                out.extend(self._naming(r, account, how, what, identified_sends, naming))
        fallback = {f.seq for f in out if f.kind == IDENTIFIED and f.seq is not None}
        out.extend(self._timing(naming, fallback))
        out.extend(self._message_ids())
        out.extend(self._envelope_rows())
        return out

    def _who(self, accounts: Iterable[str]) -> str:
        return ", ".join(sorted(self.k.label(a) for a in accounts))

    def _sealed(self, r: Recorded, recipient: str) -> list[Finding]:
        to = self.k.label(recipient)
        if r.seq in self.cred:
            s = self.cred[r.seq]
            return [
                Finding(CREDENTIAL, f"sealed send to {to} carried {self.k.label(s)}'s credential", s, recipient, r.seq)
            ]
        on_conn = self.by_connection.get(r.connection_key, set())
        if on_conn:
            return [
                Finding(
                    CONNECTION,
                    f"sealed send to {to} on connection {r.connection}, which carried {self.k.label(s)}'s credential",
                    s,
                    recipient,
                    r.seq,
                )
                for s in sorted(on_conn)
            ]
        at = self.by_address.get(r.address, set())
        if at:
            return [
                Finding(
                    ADDRESS,
                    f"sealed send to {to} from {r.address}, the address of credentialed requests of {self._who(at)}",
                    None,
                    recipient,
                    r.seq,
                    tuple(sorted(at)),
                )
            ]
        return []

    def _names_two(self, r: Recorded, recipient: str | None) -> list[Finding]:
        """An unauthenticated request that names two accounts joins them with no credential
        at all (say, a sealed send to R whose body or headers carry something of S's)."""
        named = self.named(r)
        if recipient is not None:
            named.setdefault(recipient, (NAMES, "the path"))
        if len(named) < 2:
            return []
        accounts = sorted(named)
        whats = "; ".join(f"{self.k.label(a)} by {named[a][1]}" for a in accounts)
        reason = f"unauthenticated {r.method} {r.path} names several accounts: {whats}"
        others = [a for a in accounts if a != recipient] if recipient else accounts[1:]
        target = recipient or accounts[0]
        return [Finding(NAMES, reason, a, target, r.seq) for a in others]

    def _naming(
        self,
        r: Recorded,
        account: str,
        how: str,
        what: str,
        identified_sends: list[tuple[Recorded, str, str]],
        naming: list[tuple[Recorded, str, str, str, str]],
    ) -> list[Finding]:
        label = self.k.label(account)
        request = f"{r.method} {r.path}"
        by = self.cred.get(r.seq)
        if by is not None:
            if by == account:
                return []
            naming.append((r, by, account, how, what))
            who = self.k.label(by)
            if IDENTIFIED_PATH.match(r.path) and r.method == "PUT":
                return [Finding(IDENTIFIED, f"{who} sent to {label} identified ({request})", by, account, r.seq)]
            if KEYS_PATH.match(r.path) and any(
                s.seq > r.seq and s.t - r.t <= self.window and sender == by and to == account
                for s, sender, to in identified_sends
            ):
                reason = f"{who} fetched {label}'s prekeys with its credential for an identified send ({request})"
                return [Finding(IDENTIFIED, reason, by, account, r.seq)]
            reason = f"{who}'s credentialed {request} names {label} by {what}"
            return [Finding(how, reason, by, account, r.seq)]
        others = self.by_connection.get(r.connection_key, set()) - {account}
        if others:
            return [
                Finding(
                    CONNECTION,
                    f"{request} names {label} by {what} on connection {r.connection}, "
                    f"which carried {self.k.label(s)}'s credential",
                    s,
                    account,
                    r.seq,
                )
                for s in sorted(others)
            ]
        at = self.by_address.get(r.address, set()) - {account}
        if at:
            reason = f"{request} names {label} by {what} from {r.address}, the address of {self._who(at)}'s credentials"
            return [Finding(ADDRESS, reason, None, account, r.seq, tuple(sorted(at)))]
        return []

    def _narrows(self, r: Recorded) -> list[Finding]:
        body = r.json()
        if not isinstance(body, dict):
            return []
        bits = body.get("prefix_bits")
        prefixes = body.get("prefixes")
        if not isinstance(bits, int) or not 0 < bits <= 16 or not isinstance(prefixes, list):
            return []
        by = self.cred[r.seq]
        wanted = {p for p in prefixes if isinstance(p, int)}
        inside = sorted({a for bucket, a in self.buckets if bucket >> (16 - bits) in wanted} - {by})
        reason = (
            f"{self.k.label(by)}'s credentialed bucket read of {len(wanted)} prefix(es) at {bits} bits "
            f"narrows its lookup to {len(inside)} account(s): {self._who(inside)}"
        )
        return [Finding(NARROWS, reason, by, None, r.seq, tuple(inside))]

    def _timing(self, naming: list[tuple[Recorded, str, str, str, str]], fallback: set[int]) -> list[Finding]:
        """Sealed sends just after a credentialed request naming their recipient. After the identified fallback (`fallback`: its send and prekey fetch)
        that is part of the fallback's visible cost, not a new leak."""
        out = []
        for r in self.records:
            m = SEALED_PATH.match(r.path) if r.method == "PUT" else None
            if not m:
                continue
            recipient = m.group(1)
            for q, by, account, _how, what in naming:
                if account != recipient or by == recipient:
                    continue
                if not (q.seq < r.seq and r.t - q.t <= self.window):
                    continue
                kind = IDENTIFIED if q.seq in fallback else TIMING
                reason = (
                    f"sealed send to {self.k.label(recipient)} {r.t - q.t:.3f}s after {self.k.label(by)}'s "
                    f"credentialed {q.method} {q.path} (naming it by {what})"
                    + (f" from the same address {r.address}" if q.address == r.address else "")
                )
                out.append(Finding(kind, reason, by, recipient, r.seq, related=q.seq))
        return out

    def _message_ids(self) -> list[Finding]:
        """Sealed sends whose message id also belongs to another account."""
        seen: dict[str, list[tuple[str, str, int | None]]] = defaultdict(list)  # id -> (account, how, seq)
        sealed: list[tuple[Recorded, str, str]] = []
        for r in self.records:
            body = r.json()
            if r.method == "PUT" and (m := SEALED_PATH.match(r.path)) and isinstance(body, dict):
                mid = str(body.get("message_id", ""))
                sealed.append((r, m.group(1), mid))
                seen[mid].append((m.group(1), "sealed to", r.seq))
                continue
            by = self.cred.get(r.seq)
            if by is None:
                continue
            if r.method == "PUT" and IDENTIFIED_PATH.match(r.path) and isinstance(body, dict):
                seen[str(body.get("message_id", ""))].append((by, "sent identified by", r.seq))
            elif r.method == "POST" and r.path == "/v1/messages/ack" and isinstance(body, dict):
                for mid in body.get("message_ids") or []:
                    seen[str(mid)].append((by, "acked by", r.seq))
            elif r.method == "GET" and r.path == "/v1/messages":
                answer = r.response_json()
                for msg in answer.get("messages", []) if isinstance(answer, dict) else []:
                    if isinstance(msg, dict):
                        seen[str(msg.get("message_id", ""))].append((by, "fetched by", r.seq))
        for account, _device, mid, _body in self.rows:
            seen[mid].append((account, "held in the mailbox of", None))
        out = []
        for r, recipient, mid in sealed:
            others = {a: (how, seq) for a, how, seq in seen.get(mid, []) if a != recipient}
            for account, (how, seq) in sorted(others.items()):
                where = f"request {seq}" if seq is not None else "the envelopes table"
                reason = (
                    f"sealed send to {self.k.label(recipient)} uses message id {mid[:8]}, also {how} "
                    f"{self.k.label(account)} ({where})"
                )
                # A refused (401) sealed try resent identified under its id is the visible
                # fallback; outside a first contact it is the forged-401 downgrade.
                kind = IDENTIFIED if how == "sent identified by" and r.status == 401 else MESSAGE_ID
                out.append(Finding(kind, reason, account, recipient, r.seq, related=seq))
        return out

    def _envelope_rows(self) -> list[Finding]:
        """Identified envelopes in the database name their sender (PROTOCOL.md envelope)."""
        out = []
        for account, device, mid, body in self.rows:
            if len(body) >= 22 and body[1] == KIND_IDENTIFIED_ENVELOPE:
                sender = body[2:18].hex()
                if sender != account:
                    reason = (
                        f"the envelopes table holds {mid[:8]} for {self.k.label(account)} device {device}, "
                        f"an identified envelope naming {self.k.label(sender)}"
                    )
                    out.append(Finding(IDENTIFIED, reason, sender, account, None))
        return out


def analyse(
    records: Iterable[Recorded],
    db: sqlite3.Connection | str | Path | None = None,
    *,
    window: float = 5.0,
    names: dict[str, str] | None = None,
) -> list[Finding]:
    """Every join the operator can make from `records` and the database `db`."""
    return Analysis(records, db, window=window, names=names).findings()


def without(findings: Iterable[Finding], *kinds: str) -> list[Finding]:
    return [f for f in findings if f.kind not in kinds]


def summary(findings: Iterable[Finding], per_kind: int = 4) -> str:
    """The findings for a person: counts per kind, then up to `per_kind` reasons of each."""
    findings = list(findings)
    by_kind: dict[str, list[Finding]] = defaultdict(list)
    for f in findings:
        by_kind[f.kind].append(f)
    head = ", ".join(f"{k} {len(by_kind[k])}" for k in KINDS if by_kind[k]) or "no findings"
    lines = [head]
    for k in KINDS:
        lines += [str(f) for f in by_kind[k][:per_kind]]
        if len(by_kind[k]) > per_kind:
            lines.append(f"... and {len(by_kind[k]) - per_kind} more of kind {k}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`cd tests && python -m support.linkage LOG.jsonl RELAY.db`: every finding of a
    dumped log (RecordingRelay.dump; the day test leaves day.jsonl and relay/relay.db in
    its tmp_path); exit 1 if any is neither identified nor by address."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path)
    parser.add_argument("db", type=Path, nargs="?")
    parser.add_argument("--window", type=float, default=5.0)
    args = parser.parse_args(argv)
    from support.recorder import RecordingRelay

    findings = analyse(RecordingRelay.load(args.log), args.db, window=args.window)
    print(summary(findings, per_kind=1000))
    return 1 if without(findings, ADDRESS, IDENTIFIED) else 0


if __name__ == "__main__":
    raise SystemExit(main())
