"""Relay retention periods are settings with 30-day defaults and a documented upper bound
(90 days): `imsg-relay serve` refuses to start past it, before it binds or opens anything."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from imsg_relay.settings import MAX_BLOB_RETENTION_DAYS, MAX_RETENTION_DAYS, Settings


def test_defaults_are_thirty_days_and_the_bound_is_ninety():
    s = Settings()
    assert (s.retention_days, s.blob_retention_days) == (30, 30)
    assert MAX_RETENTION_DAYS == MAX_BLOB_RETENTION_DAYS == 90
    assert (
        Settings.from_env({"IMSG_RELAY_RETENTION_DAYS": "90", "IMSG_RELAY_BLOB_RETENTION_DAYS": "90"}).retention_ms
        == 90 * 86_400_000
    )


@pytest.mark.parametrize("name", ["IMSG_RELAY_RETENTION_DAYS", "IMSG_RELAY_BLOB_RETENTION_DAYS"])
def test_serve_refuses_to_start_past_the_bound(tmp_path, name):
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMSG_")}
    r = subprocess.run(
        [sys.executable, "-m", "imsg_relay.cli", "serve", "--port", "0", "--data", str(tmp_path / "data")],
        env={**env, name: "91"},
        capture_output=True,
        timeout=60,
    )
    assert r.returncode == 2 and r.stdout == b""
    assert b"91 days is not between 1 and 90" in r.stderr
    assert not (tmp_path / "data").exists()  # nothing created
