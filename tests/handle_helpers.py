"""Helpers for tests of reachable handles, importable by name (`conftest` is ambiguous:
tests/unit has one too)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def swap_handle_owners(data_dir: Path, db: sqlite3.Connection, a: str, b: str, handles) -> None:
    """What a malicious relay can do to its directory: every discoverable row of `handles`
    held by account `a` now names `b`, and the other way round. The operator holds the
    discovery key, so it can re-seal the records; `handles` are the candidates to try
    (the relay keeps only tags, so the test names the plaintexts)."""
    from imsg_relay.discovery import DiscoveryKey, seal_record, tag_for

    key = DiscoveryKey.load(data_dir / "discovery.key")
    db.execute("BEGIN IMMEDIATE")
    for handle in set(handles):
        output = key.output(handle)
        tag = tag_for(output)
        row = db.execute(
            "SELECT account_id, state FROM handles WHERE tag = ? AND state != 'pending'", (tag,)
        ).fetchone()
        if row is None or row[0] not in (a, b):
            continue
        new = b if row[0] == a else a
        db.execute(
            "UPDATE handles SET account_id = ?, record = ? WHERE tag = ? AND account_id = ?",
            (new, seal_record(output, new, row[1] == "verified"), tag, row[0]),
        )
    db.execute("COMMIT")
