"""Per-user, per-boot state that must live outside the home: the unlock agent's socket and
the wrong-passcode counter.

Why not the home: a wrong passcode must leave the home byte-identical (the home may be on
a disk someone copies; a counter there would be a write anyone without the passcode can
provoke), and an unlock must end at reboot. `$XDG_RUNTIME_DIR` (systemd: a 0700 tmpfs
owned by the user, emptied at logout/reboot) is made for exactly this; without it we use
`<tmp>/imsg-<uid>`, created 0700 and refused if it is not ours or not private (another
user could otherwise pre-create it and read the socket or reset the counter).

The counter slows a person guessing at the keyboard. It is no defence against someone
holding a copy of the disk: against them the only protection is Argon2id's cost (see
docs/STORAGE.md), which is why it is generous.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from imsg import errors

MAX_DELAY_S = 60.0  # a person who mistypes waits a minute at worst


def runtime_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR")
    uid = os.getuid()
    if base and _private_dir(Path(base), uid, create=False):
        path = Path(base) / "imsg"
    else:
        path = Path(tempfile.gettempdir()) / f"imsg-{uid}"
    if not _private_dir(path, uid, create=True):
        raise errors.LocalStateError(
            f"{path} is not a private directory owned by this user",
            hint="remove it, or set XDG_RUNTIME_DIR to a private directory",
        )
    return path


def _private_dir(path: Path, uid: int, *, create: bool) -> bool:
    if create:
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            pass
        except OSError:
            return False
    try:
        st = path.lstat()  # lstat: a symlink planted by someone else is refused, not followed
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == uid and stat.S_IMODE(st.st_mode) & 0o077 == 0


def home_id(home: Path) -> str:
    """A short stable name for a home (its resolved path), for files in the runtime dir."""
    return hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:24]


def failure_delay(failures: int) -> float:
    """Seconds to wait after `failures` wrong passcodes in a row: 0, 1, 2, 4, ... 60."""
    return 0.0 if failures <= 0 else min(2.0 ** (failures - 1), MAX_DELAY_S)


class FailureCounter:
    """Wrong passcodes in a row for one home, in the runtime dir (see the module doc)."""

    def __init__(
        self, home: Path, *, sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.time
    ):
        self.path = runtime_dir() / f"failures-{home_id(home)}.json"
        self._sleep, self._clock = sleep, clock

    def _read(self) -> tuple[int, float]:
        try:
            doc = json.loads(self.path.read_text())
            return int(doc["failures"]), float(doc["last"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0, 0.0

    def wait_turn(self) -> None:
        """Before an attempt: wait out what is left of the delay earned by earlier failures
        (so starting a new process does not skip it)."""
        failures, last = self._read()
        left = last + failure_delay(failures) - self._clock()
        if left > 0:
            self._sleep(min(left, MAX_DELAY_S))

    def failed(self) -> int:
        failures = self._read()[0] + 1
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"failures": failures, "last": self._clock()}, fh)
        os.replace(tmp, self.path)
        self._sleep(failure_delay(failures))
        return failures

    def succeeded(self) -> None:
        self.path.unlink(missing_ok=True)
