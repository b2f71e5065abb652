"""The relay's secrets: 32 random bytes made once, each in a 0600 file in the data directory
(created with O_EXCL, so two workers starting together cannot make two different ones).

`relay.secret` keys the hashes of pending verification codes; `discovery.key` seeds the
OPRF key that blinds handles (imsg_relay/discovery.py). Without them a stolen database
reveals neither codes nor handles, even to a dictionary of phone numbers.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

SECRET_BYTES = 32


class SecretFileError(Exception):
    """the relay secret file is unusable"""


def create_once(path: Path, make: Callable[[], bytes]) -> None:
    """Write `make()` to a new 0600 file at `path` unless it exists. O_EXCL: of two workers
    starting together one writes and the other reads what it wrote, never a second value."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        os.write(fd, make())
        os.fsync(fd)
    finally:
        os.close(fd)


def load_or_create_secret(path: Path) -> bytes:
    create_once(path, lambda: secrets.token_bytes(SECRET_BYTES))
    data = path.read_bytes()
    if len(data) != SECRET_BYTES:
        raise SecretFileError(f"relay secret file {path} does not hold {SECRET_BYTES} bytes")
    if path.stat().st_mode & 0o077:
        raise SecretFileError(f"relay secret file {path} is readable by others; chmod 600 it")
    return data
