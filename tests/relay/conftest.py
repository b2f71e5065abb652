from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

# starlette's TestClient still works on httpx; its nag about httpx2 is noise here.
warnings.filterwarnings("ignore", message=".*httpx2.*")
from starlette.testclient import TestClient  # noqa: E402

from imsg_relay.app import create_app  # noqa: E402
from imsg_relay.settings import Settings  # noqa: E402

from support.relays import ThreadRelay, relay_settings  # noqa: E402


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return relay_settings(tmp_path / "relay")


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def live(settings: Settings) -> Iterator[ThreadRelay]:
    with ThreadRelay(settings) as relay:
        yield relay


@pytest.fixture
def pg_ns() -> Iterator[str]:
    """A fresh PostgreSQL schema name for one test (created by the test or the relay),
    dropped afterwards. Tests using it skip themselves when PostgreSQL is absent."""
    import secrets

    name = f"imsg_test_{secrets.token_hex(6)}"
    yield name
    try:
        import psycopg

        from .test_postgres import PG

        with psycopg.connect(PG, autocommit=True, connect_timeout=2) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    except Exception:
        pass  # no PostgreSQL here: the test skipped


# --- S3: moto's S3 server on loopback, started once per test session (issue 16) ---

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The URL of a real S3-compatible server (moto in server mode) on a free loopback
    port; boto3 in this process and in relay subprocesses finds its test credentials in
    the environment (S3_ENV)."""
    import os
    import socket

    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:  # pragma: no cover - the test extra is always installed here
        pytest.skip(f"moto[server] is not installed ({exc.name}): pip install 'imsg-relay[test]'")
    for name, value in S3_ENV.items():
        os.environ.setdefault(name, value)
    with socket.socket() as s:  # a free port (moto takes a number, not a socket)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_url(s3_endpoint: str) -> str:
    """An s3:// blob store URL for a new, empty bucket of its own."""
    import secrets

    import boto3

    bucket = f"imsg-test-{secrets.token_hex(6)}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/relay?endpoint={s3_endpoint}"
