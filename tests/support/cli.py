"""Run the real `imsg` command in a subprocess, the way people and scripts do, and read
its output: data on stdout (NDJSON with --json), errors as one JSON object per line on stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

IMSG = [sys.executable, "-m", "imsg_cli.main"]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any IMSG_* variable (a developer's own
    IMSG_HOME or IMSG_RELAY must never reach a test), plus `extra`. Copies to our own
    devices leave at once (IMSG_SYNC_DELAY=0): the tests check what arrives, not when;
    tests/integration/test_private_delivery.py checks the real delay."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMSG_")}
    env["IMSG_SYNC_DELAY"] = "0"
    env.update(extra)
    return env


def imsg_command(home: Path | None, *args: str, relay: str | None = None, json_mode: bool = False) -> list[str]:
    cmd = list(IMSG)
    if home is not None:
        cmd += ["--home", str(home)]
    if relay is not None:
        cmd += ["--relay", relay]
    if json_mode:
        cmd.append("--json")
    return cmd + list(args)


def run_imsg(
    home: Path | None,
    *args: str,
    relay: str | None = None,
    json_mode: bool = False,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """`imsg [--home H] [--relay R] [--json] ARGS...`; stdin is closed unless given."""
    return subprocess.run(
        imsg_command(home, *args, relay=relay, json_mode=json_mode),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env if env is not None else clean_env(),
        stdin=None if stdin is not None else subprocess.DEVNULL,
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def assert_ok(r: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    """Exit 0; returns the NDJSON rows on stdout."""
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    return json_lines(r.stdout)


def assert_json_error(r: subprocess.CompletedProcess[str], code: int, error: str | None = None) -> dict[str, Any]:
    """Exit `code`, nothing on stdout, exactly one JSON error object on stderr."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == "", "errors must not write to stdout"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, f"one JSON object on stderr, got {r.stderr!r}"
    doc = json.loads(lines[0])
    assert set(doc) >= {"error", "message"} and doc["message"]
    if error is not None:
        assert doc["error"] == error, doc
    return doc
