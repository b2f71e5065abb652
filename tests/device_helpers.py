"""Linking a second device in tests, importable by name (`conftest` is ambiguous: tests/unit
has one too)."""

from __future__ import annotations

import threading
from pathlib import Path

from imsg.client import Client


def link_device(relay_url: str, existing: Client, home: Path, device_name: str = "", *, history: int = 0):
    """Pair a new device in `home` with `existing`'s account, as `imsg device add` on one
    side and `imsg device link` on the other do: the new side runs in a thread because both
    wait on each other. Returns the DeviceInfo `device_add_finish` gave; the caller reopens
    the new home as it needs."""
    pairing = existing.device_add_start()
    out: dict = {}

    def run() -> None:
        try:
            with Client.open(home, relay=relay_url) as c:
                out["who"] = c.device_link(pairing.code, device_name)
        except BaseException as exc:
            out["exc"] = exc

    th = threading.Thread(target=run, name=f"link-{Path(home).name}")
    th.start()
    try:
        info = existing.device_add_finish(pairing, timeout=30, history=history)
    finally:
        th.join(40)
    assert not th.is_alive()
    assert "exc" not in out, out
    return info
