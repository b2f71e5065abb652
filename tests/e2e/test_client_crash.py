"""Client crash consistency (SECURITY-TESTS 21 and R12): `kill -9` the `imsg` process at
random moments of sending and receiving, then check that

- no two different messages were ever encrypted under the same (ratchet key, n) — the
  envelopes the relay holds are the evidence, since every ratchet header is in them;
- every message the sender committed to its history reaches the recipient exactly once
  (the outbox re-sends what a killed process had encrypted but not handed over);
- the recipient, killed while receiving, neither loses a message nor fails to decrypt one.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from imsg.protocol import envelope as env
from imsg.protocol import ratchet, session
from imsg.store.sqlite import SQLiteStore

from support.cli import IMSG

KILLS = 30


def _run(home: Path, *args: str, relay: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*IMSG, "--home", str(home), "--relay", relay, *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def _killed_at_random(home: Path, *args: str, relay: str, rng: random.Random, span: float) -> None:
    proc = subprocess.Popen(
        [*IMSG, "--home", str(home), "--relay", relay, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    # Spread the kills over the whole run of a command (`span`, measured on this machine):
    # before the ratchet commit, between it and the relay's answer, and after.
    time.sleep(rng.uniform(0.2 * span, 1.1 * span))
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def _ratchet_position(body: bytes) -> tuple[bytes, int]:
    message = env.Envelope.decode(body).session_message
    if session.message_type(message) == session.MSG_PREKEY:
        message = message[session._PREKEY_LEN :]
    dh_pub, _, n = ratchet.parse_header(message)
    return dh_pub, n


def _sent_texts(home: Path) -> set[str]:
    store = SQLiteStore(home / "imsg.db")
    try:
        contact = store.contacts()[0]
        return {m.text for m in store.history(contact.account_id, 10_000) if m.direction == "out"}
    finally:
        store.close()


@pytest.mark.slow
def test_kill_9_while_sending_and_receiving_loses_nothing_and_reuses_no_key(tmp_path, relay_proc):
    rng = random.Random(21)
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    assert _run(alice, "init", "alice@example.com", relay=relay_proc.url).returncode == 0
    assert _run(bob, "init", "bob@example.com", relay=relay_proc.url).returncode == 0
    assert _run(alice, "send", "bob@example.com", "first", relay=relay_proc.url).returncode == 0
    started = time.monotonic()
    assert _run(alice, "send", "bob@example.com", "second", relay=relay_proc.url).returncode == 0
    span = time.monotonic() - started

    positions: dict[tuple[bytes, int], set[str]] = {}
    for i in range(KILLS):
        _killed_at_random(alice, "send", "bob@example.com", f"crash {i}", relay=relay_proc.url, rng=rng, span=span)
        # Snapshot bob's mailbox before anything is acked: every envelope alice produced.
        with sqlite3.connect(relay_proc.db_path) as db:
            for message_id, body in db.execute("SELECT message_id, body FROM envelopes"):
                positions.setdefault(_ratchet_position(bytes(body)), set()).add(
                    message_id.hex() if isinstance(message_id, bytes) else message_id
                )
        if i % 3 == 2:  # bob is killed while receiving, too
            _killed_at_random(bob, "receive", relay=relay_proc.url, rng=rng, span=span)

    # A normal run flushes whatever a killed sender left in its outbox.
    assert _run(alice, "send", "bob@example.com", "last", relay=relay_proc.url).returncode == 0
    with sqlite3.connect(relay_proc.db_path) as db:
        for message_id, body in db.execute("SELECT message_id, body FROM envelopes"):
            positions.setdefault(_ratchet_position(bytes(body)), set()).add(
                message_id.hex() if isinstance(message_id, bytes) else message_id
            )

    crashed_but_committed = len(_sent_texts(alice)) - 3  # first, second, last
    assert 0 < crashed_but_committed < KILLS, "the kills did not land on both sides of the commit"
    reused = {pos: ids for pos, ids in positions.items() if len(ids) > 1}
    assert not reused, f"(ratchet key, n) used for different messages: {reused}"

    out = _run(bob, "--json", "receive", relay=relay_proc.url)
    assert out.returncode == 0, out.stderr  # no rejected (undecryptable) message
    bob_store = SQLiteStore(bob / "imsg.db")
    try:
        contact = bob_store.contacts()[0]
        received = [m.text for m in bob_store.history(contact.account_id, 10_000)]
    finally:
        bob_store.close()
    assert len(received) == len(set(received)), "a message was stored twice"
    sent = _sent_texts(alice)
    assert {"first", "second", "last"} <= sent
    assert set(received) == sent, f"lost: {sent - set(received)}, unexpected: {set(received) - sent}"
    for line in out.stdout.splitlines():
        json.loads(line)
