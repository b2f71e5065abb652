"""Choosing the backends: `--database`, `--push`, `--blobs` (or their IMSG_RELAY_* variables),
and a clear error naming the extra to install when a backend's library is missing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import httpx
import pytest

from imsg_relay.settings import Settings, SettingsError

from .helpers import new_identity, registration
from .test_postgres import PG, REDIS, _redis_reason, pg_reason
from support.relays import ProcessRelay


def pg_url(schema: str) -> str:
    """A postgresql:// URL for the test database whose search_path is `schema`."""
    from psycopg.conninfo import conninfo_to_dict

    d = conninfo_to_dict(PG)
    return (
        f"postgresql://{d.get('user', 'postgres')}@{d.get('host', '127.0.0.1')}:{d.get('port', 5432)}/"
        f"{d.get('dbname', 'test')}?options=-csearch_path%3D{schema}"
    )


def make_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')


@pytest.mark.parametrize(
    "field, value",
    [("database_url", "mysql://db/relay"), ("redis_url", "http://cache"), ("blobs_url", "ftp://files")],
)
def test_backend_urls_of_the_wrong_kind_are_refused(tmp_path, field, value):
    with pytest.raises(SettingsError) as refused:
        Settings(data_dir=tmp_path, **{field: value})
    assert value not in str(refused.value)  # URLs may carry passwords: never echoed


def test_the_database_pool_is_bounded(tmp_path):
    assert Settings.from_env({"IMSG_RELAY_DATABASE_POOL": "32"}).database_pool == 32
    with pytest.raises(SettingsError, match="database pool"):
        Settings(data_dir=tmp_path, database_pool=0)


def test_flags_override_the_environment():
    s = Settings.from_env(
        {"IMSG_RELAY_DATABASE_URL": "postgresql://env/db", "IMSG_RELAY_BLOBS_URL": "/env/blobs"},
        database_url="postgresql://flag/db",
    )
    assert s.database_url == "postgresql://flag/db" and s.blobs_url == "/env/blobs"
    assert "postgresql" not in repr(s) and "/env/blobs" not in repr(s)


def _serve_without(library: str, tmp_path, *flags: str) -> subprocess.CompletedProcess[str]:
    """`imsg-relay serve FLAGS` in a Python where `library` cannot be imported."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules[{library!r}] = None  # as if the package were not installed
        from imsg_relay.cli import main
        sys.exit(main(["serve", "--port", "0", "--data", {str(tmp_path / "d")!r}, *{list(flags)!r}]))
        """
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "library, flags, extra",
    [
        ("psycopg", ("--database", "postgresql://127.0.0.1/none"), "postgres"),
        ("redis", ("--push", "redis://127.0.0.1:1/0"), "redis"),
        ("boto3", ("--blobs", "s3://bucket?endpoint=http://127.0.0.1:1"), "s3"),
    ],
)
def test_a_missing_backend_library_names_the_extra(tmp_path, library, flags, extra):
    done = _serve_without(library, tmp_path, *flags)
    assert done.returncode == 2, done.stderr
    assert f"pip install 'imsg-relay[{extra}]'" in done.stderr
    assert "Traceback" not in done.stderr and "ModuleNotFoundError" not in done.stderr


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.skipif(pg_reason is not None, reason=pg_reason or "")
@pytest.mark.skipif(_redis_reason() is not None, reason=_redis_reason() or "")
def test_serve_with_database_push_and_blobs_flags(tmp_path, pg_ns):
    """`imsg-relay serve --database --push --blobs`: state lands in PostgreSQL, blob files
    in the --blobs directory, not in the data directory."""
    import psycopg

    make_schema(pg_ns)
    blobs = tmp_path / "blob-files"
    relay = ProcessRelay(
        tmp_path / "data",
        args=("--database", pg_url(pg_ns), "--database-pool", "4", "--push", REDIS, "--blobs", str(blobs)),
    ).start()
    try:
        me = new_identity()
        with httpx.Client(base_url=relay.url, timeout=10) as c:
            assert c.post("/v1/accounts", json=registration(me)).status_code == 201
            created = c.post("/v1/blobs", json={"size": 10}, headers=me.headers())
            assert created.status_code == 201, created.text
    finally:
        assert relay.stop() == 0, relay.log()
    with psycopg.connect(PG) as conn:
        conn.execute(f'SET search_path TO "{pg_ns}"')
        assert conn.execute("SELECT count(*) FROM accounts").fetchone() == (1,)
    assert not (tmp_path / "data" / "relay.db").exists()
    assert [p.name for p in blobs.rglob("*") if p.is_file()] == [created.json()["blob_id"]]
    assert os.environ.get("IMSG_RELAY_DATABASE_URL") is None  # flags, not the environment
