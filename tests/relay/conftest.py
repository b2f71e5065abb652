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
