"""`imsg privacy report`: what the relay holds about this account, from its own tables."""

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


@app.command("report")
def report(ctx: typer.Context) -> None:
    """Everything the relay holds about this account: devices, prekeys, queued envelopes,
    blobs, backups, handles... straight from the relay's tables (--json: one document)."""
    state: State = ctx.obj
    with state.client() as client:
        doc = client.privacy_report()
    out = state.out
    if out.json:
        out.record(as_json(doc))
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
}
