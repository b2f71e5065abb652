"""Operations endpoints: /healthz, /readyz, /metrics (issue 16), and `imsg-relay migrate`.

/metrics must never carry who: the scenario below registers accounts with handles, sends,
uploads and downloads a blob, looks a handle up, and the exposition is searched for every
id, handle, token and address the scenario used."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import httpx
import pytest

from .helpers import b64, new_message_id, private_lookup, register, send
from .test_backends import make_schema, pg_url
from .test_postgres import PG, pg_reason
from support.relays import ThreadRelay, relay_settings


def test_healthz_and_readyz(tmp_path):
    with ThreadRelay(relay_settings(tmp_path)) as relay, httpx.Client(base_url=relay.url) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        r = c.get("/readyz")
        assert r.status_code == 200
        assert r.json() == {"status": "ready", "database": "ok", "push": "ok", "blobs": "ok"}


def test_readyz_names_the_backend_that_is_down(tmp_path):
    from imsg_relay.blobs.filesystem import FilesystemBlobStore

    (tmp_path / "not-a-dir").write_text("x")  # the blob store's root cannot be made
    blobs = FilesystemBlobStore(tmp_path / "not-a-dir" / "blobs")
    with ThreadRelay(relay_settings(tmp_path / "d"), blobs=blobs) as relay, httpx.Client(base_url=relay.url) as c:
        r = c.get("/readyz")
        assert r.status_code == 503
        assert r.json() == {"status": "unavailable", "database": "ok", "push": "ok", "blobs": "unavailable"}
        assert str(tmp_path) not in r.text
        assert c.get("/healthz").status_code == 200  # alive all the same


def test_readyz_reports_an_unreachable_s3_store(tmp_path, s3_endpoint):
    from support.relays import closed_port_url

    settings = relay_settings(tmp_path, blobs_url=f"s3://nobucket?endpoint={closed_port_url()}")
    with ThreadRelay(settings) as relay, httpx.Client(base_url=relay.url, timeout=30) as c:
        r = c.get("/readyz")
    assert r.status_code == 503 and r.json()["blobs"] == "unavailable" and r.json()["database"] == "ok"
    assert "nobucket" not in r.text and "127.0.0.1" not in r.text


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"no {name}{labels} in the exposition")


def test_metrics_count_by_route_and_name_nobody(tmp_path):
    with ThreadRelay(relay_settings(tmp_path)) as relay, httpx.Client(base_url=relay.url) as c:
        alice, bob = register(c, "alice@example.com"), register(c, "+15550001234")
        message_id = new_message_id()
        assert send(c, alice, bob, b"hello", message_id=message_id).status_code == 200
        assert len(c.get("/v1/messages", headers=bob.headers()).json()["messages"]) == 1
        assert private_lookup(c, bob, "alice@example.com") == alice.account_id
        data = os.urandom(5000)
        created = c.post("/v1/blobs", json={"size": len(data)}, headers=alice.headers()).json()
        blob_id, part = created["blob_id"], created["part_size"]
        for i in range(0, len(data), part):
            c.put(
                f"/v1/blobs/{blob_id}/parts/{i // part}",
                content=data[i : i + part],
                headers={**alice.headers(), "Content-Type": "application/octet-stream"},
            )
        assert c.post(f"/v1/blobs/{blob_id}/complete", json={}, headers=alice.headers()).status_code == 200
        assert c.get(f"/v1/blobs/{blob_id}", headers=bob.headers()).content == data
        c.get("/no/such/path/" + alice.account_id)
        text = ""
        for _ in range(200):  # the first sweep runs as the relay starts; wait for its count
            text = c.get("/metrics").text
            if _metric(text, "imsg_relay_sweeper_runs_total", result="ok") >= 1:
                break
    assert (
        _metric(text, "imsg_relay_requests_total", route="/v1/messages/{account_id}", method="PUT", status="200") == 1
    )
    assert _metric(text, "imsg_relay_requests_total", route="/v1/accounts", method="POST", status="201") == 2
    assert _metric(text, "imsg_relay_requests_total", route="unmatched", method="GET", status="404") == 1
    assert _metric(text, "imsg_relay_request_seconds_count", route="/v1/messages") == 1
    assert _metric(text, "imsg_relay_blob_bytes_total", direction="in") == len(data)
    assert _metric(text, "imsg_relay_blob_bytes_total", direction="out") >= len(data)
    assert _metric(text, "imsg_relay_sweeper_runs_total", result="ok") >= 1
    _metric(text, "imsg_relay_long_polls_waiting")
    _metric(text, "imsg_relay_storage_queue_depth")
    secrets_used = [
        alice.account_id,
        bob.account_id,
        "alice@example.com",
        "15550001234",
        alice.tokens[1],
        bob.tokens[1],
        message_id,
        blob_id,
        "127.0.0.1",
        str(relay.port),
        b64(alice.account_key),
        base64.b64decode(b64(alice.account_key)).hex(),
    ]
    for secret in secrets_used:
        assert secret not in text, secret


def _migrate(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "imsg_relay.cli", "migrate", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.postgres
@pytest.mark.skipif(pg_reason is not None, reason=pg_reason or "")
def test_migrate_postgres_twice_and_from_several_workers_at_once(pg_ns):
    import psycopg

    from imsg_relay.storage.postgres.schema import SCHEMA_VERSION

    make_schema(pg_ns)
    url = pg_url(pg_ns)
    runs = [_migrate("--database", url) for _ in range(4)]  # at once: the advisory lock
    for p in runs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert f"postgresql schema at version {SCHEMA_VERSION}" in out
    again = _migrate("--database", url)
    assert again.wait(60) == 0
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{pg_ns}"')
        versions = [v for (v,) in conn.execute("SELECT version FROM relay_schema ORDER BY version").fetchall()]
        assert versions == list(range(1, SCHEMA_VERSION + 1))  # each migration once
        conn.execute("INSERT INTO relay_schema (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    newer = _migrate("--database", url)
    _, err = newer.communicate(timeout=60)
    assert newer.returncode == 2 and "newer than this relay" in err and "Traceback" not in err


def test_migrate_sqlite_and_refuse_a_newer_schema(tmp_path):
    import sqlite3

    from imsg_relay.storage.sqlite.schema import SCHEMA_VERSION

    data = tmp_path / "data"
    for _ in range(2):
        p = _migrate("--data", str(data))
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0 and f"version {SCHEMA_VERSION}" in out, err
    conn = sqlite3.connect(data / "relay.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    p = _migrate("--data", str(data))
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "newer than this relay" in err


def test_a_client_leaving_mid_body_is_no_internal_error(tmp_path, caplog):
    """A body cut off by the client is counted as aborted, and logged as nothing: it is
    not the relay's error (it was logged as one, with a traceback, under benchmark load)."""
    import logging
    import socket

    caplog.set_level(logging.INFO)
    with ThreadRelay(relay_settings(tmp_path)) as relay, httpx.Client(base_url=relay.url) as c:
        me = register(c)
        sock = socket.create_connection(("127.0.0.1", relay.port))
        sock.sendall(
            f"PUT /v1/messages/{me.account_id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {me.tokens[1]}\r\n"
            'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"message_id"'.encode()
        )
        sock.close()
        for _ in range(500):  # until the relay has seen the request end
            text = c.get("/metrics").text
            try:
                aborted = _metric(
                    text, "imsg_relay_requests_total", route="/v1/messages/{account_id}", method="PUT", status="aborted"
                )
            except AssertionError:
                aborted = 0
            if aborted:
                break
    assert aborted == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("imsg_relay")]
