"""`imsg privacy report`: what the relay holds about this account, from its own tables,
and what a relay that records every request still learns (docs/PROTOCOL.md §8b).

The second part is the client's statement, not the relay's: a relay cannot be trusted to
say what it observes, and only the client knows whether it uses a proxy or sealed-only."""

from __future__ import annotations

from typing import Any

import typer

from imsg_cli.output import human_size, iso, local_time
from imsg_cli.state import State

app = typer.Typer(help="What the relay knows about you.", no_args_is_help=True)


def _age(now: int, then: int) -> str:
    seconds = max(0, now - then) // 1000
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# Flags the relay reports as SQLite's 0/1.
_FLAGS = frozenset({"receiving", "complete", "expired", "access_key_set", "allow_anyone"})


def as_json(value: Any, key: str = "") -> Any:
    """The relay's report in the conventions of every other --json row: times (`*_at`,
    epoch ms from the relay) as ISO 8601 UTC, flags as true/false."""
    if isinstance(value, dict):
        return {k: as_json(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [as_json(v, key) for v in value]
    if key.endswith("_at") and isinstance(value, int) and not isinstance(value, bool):
        return iso(value)
    if key in _FLAGS and value in (0, 1) and not isinstance(value, bool):
        return bool(value)
    return value


def still_learns(doc: dict[str, Any], *, proxy: str | None, sealed_only: bool) -> list[dict[str, str]]:
    """What a relay operator who records every request (headers, bodies, connections,
    addresses, times) still learns about this account, in plain words: one {"what",
    "detail"} per fact, the numbers taken from the relay's own report `doc`."""
    devices = len(doc.get("devices", []))
    queued = sum(int(m.get("count", 0)) for m in doc.get("mailboxes", []))
    blobs = len(doc.get("blobs", []))
    if proxy:
        address = (
            f"your IP address on credentialed requests only (your mailbox, uploads, lookups' evaluations): "
            f"requests sent without a credential (sealed sends, recipients' keys and profiles, downloads, "
            f"bucket reads) go through {proxy}, each under its own proxy username"
        )
    else:
        address = (
            "your IP address on every request: without a proxy, a relay that records addresses can join "
            "your sealed sends, lookups and downloads to your credentialed requests (--proxy socks5://HOST:PORT "
            "or IMSG_PROXY, e.g. Tor, hides it)"
        )
    first = (
        "nothing identified: sealed-only is on, so a message to someone whose access key you lack waits instead"
        if sealed_only
        else "the sender and recipient of a first message to someone whose access key you do not hold "
        '(it goes identified: send --json says "sealed": false); sealed-only (imsg sealed only on) refuses those'
    )
    return [
        {
            "what": "mailbox_sizes_and_times",
            "detail": f"how many envelopes reach each of your {devices} device(s) and when ({queued} queued now), "
            "and when each device fetches and acks them",
        },
        {
            "what": "padded_sizes",
            "detail": "the padded size of every envelope (2 KiB to 96 KiB buckets) and the exact size of each "
            "attachment",
        },
        {"what": "sealed_recipients", "detail": "that someone sent you a sealed message, and when; not who"},
        {"what": "ip_address", "detail": address},
        {"what": "first_contacts", "detail": first},
        {
            "what": "uploads",
            "detail": f"that you uploaded each attachment blob ({blobs} held now), its size and when; "
            "not who downloads it",
        },
        {
            "what": "timing",
            "detail": "the time of every request: an upload or a lookup a moment before a sealed send, or the "
            "fetch of a new sender's keys a moment after your mailbox fetch, can be correlated by time, even "
            "through a proxy",
        },
        {
            "what": "account",
            "detail": "that your account exists, its devices' public keys, your handles only blinded, how many "
            "lookups you make, and when your profile changes",
        },
    ]


@app.command("report")
def report(ctx: typer.Context) -> None:
    """Everything the relay holds about this account: devices, prekeys, queued envelopes,
    blobs, backups, handles... straight from the relay's tables; then what a relay that
    records every request still learns (--json: one document, `still_learns`)."""
    state: State = ctx.obj
    with state.client() as client:
        doc = client.privacy_report()
        sealed_only = client.sealed().sealed_only
    learns = still_learns(doc, proxy=state.proxy, sealed_only=sealed_only)
    out = state.out
    if out.json:
        out.record({**as_json(doc), "still_learns": learns})
        return
    now = doc["generated_at"]
    for a in doc["account"]:
        out.line(
            f"account {a['account_id']}: public key, a signed device list of {human_size(a['device_list_bytes'])}, "
            f"registered {local_time(a['created_at'])}"
        )
    states = ", ".join(h.get("state", "?") for h in doc["handles"])
    out.line(
        f"handles: {len(doc['handles'])} ({states}), kept only blinded (a hash of an OPRF output under the relay's key)"
    )
    out.line(f"devices: {len(doc['devices'])}")
    counts: dict[int, dict[str, int]] = {}
    for p in doc["one_time_prekeys"]:
        counts.setdefault(p["device_id"], {})[p["kind"]] = p["count"]
    for d in doc["devices"]:
        c = counts.get(d["device_id"], {})
        signed = [p["kind"] for p in doc["signed_prekeys"] if p["device_id"] == d["device_id"]]
        out.line(
            f"  device {d['device_id']}: added {local_time(d['created_at'])}; signed prekeys "
            f"{', '.join(signed) or 'none'}; one-time prekeys {c.get('x25519', 0)} X25519, "
            f"{c.get('kem', 0)} ML-KEM"
        )
    days = doc["retention"]
    for m in doc["mailboxes"]:
        out.line(
            f"  queued for device {m['device_id']}: {m['count']} envelopes, {human_size(m['bytes'])}, "
            f"oldest {_age(now, m['oldest_received_at'])} old (deleted after {days['envelope_days']} days)"
        )
    if not doc["mailboxes"]:
        out.line("queued envelopes: none")
    out.line(f"attachment blobs: {len(doc['blobs'])}")
    for b in doc["blobs"]:
        state_ = "complete" if b["complete"] else f"uploading ({b['parts_received']} parts)"
        out.line(
            f"  {b['blob_id']}: {human_size(b['size'])}, {state_}, {_age(now, b['created_at'])} old, "
            + ("expired (awaiting the sweeper)" if b["expired"] else f"deleted {local_time(b['expires_at'])}")
        )
    for c in doc["provisioning_channels"]:
        out.line(
            f"pairing channel {c['channel']}: {c['queued_messages']} messages queued, "
            f"expires {local_time(c['expires_at'])}"
        )
    for p in doc.get("profiles", []):
        out.line(
            f"profile (name and photo): {human_size(p['size'])} of ciphertext, revision {p['revision']}, "
            f"updated {local_time(p['updated_at'])} (kept until replaced)"
        )
    for b in doc["backups"]:
        out.line(
            f"backup: {human_size(b['size'])} of ciphertext, updated {local_time(b['updated_at'])} "
            "(kept until you turn backups off)"
        )
    if not doc["backups"]:
        out.line("backup: none")
    for a in doc.get("sealed_access", []):
        out.line(
            "sealed sender: "
            + ("a hash of your access key" if a["access_key_set"] else "no access key")
            + (", sealed messages from anyone allowed" if a["allow_anyone"] else "")
        )
    for name, rows in doc.items():  # sections a newer relay reports that this client does not know
        if isinstance(rows, list) and name not in _KNOWN:
            out.line(f"{name}: {len(rows)} records")
    out.line("")
    out.line("what the relay still learns (if it records every request; docs/PROTOCOL.md §8b):")
    for fact in learns:
        out.line(f"  - {fact['detail']}")


_KNOWN = {
    "account",
    "handles",
    "devices",
    "signed_prekeys",
    "one_time_prekeys",
    "mailboxes",
    "envelopes",
    "provisioning_channels",
    "blobs",
    "backups",
    "profiles",
    "sealed_access",
    "still_learns",
}
