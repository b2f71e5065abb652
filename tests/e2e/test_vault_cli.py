"""`imsg passcode set|change|remove`, `imsg lock`, `imsg unlock`, `imsg retention` in real
subprocesses against a relay subprocess, with the real Argon2id parameters (issue 6).

Each test has its own runtime dir (XDG_RUNTIME_DIR: the unlock agent's socket, the
wrong-passcode counter) and its own homes. The runtime dir sits directly under the temp
dir, not in tmp_path: the agent's socket path must fit a Unix socket's 107 bytes, which
pytest-xdist's deeper tmp_path plus a test's name can exceed.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from support.cli import IMSG
from support.tty import on_a_terminal

PASS = "correct horse battery"
SECRET = "meet me at the old mill at nine"


class Env:
    def __init__(self, tmp_path: Path, run_dir: Path, url: str):
        self.url = url
        self.run_dir = run_dir
        self.base = {k: v for k, v in os.environ.items() if not k.startswith(("IMSG_", "PYTHON_KEYRING"))}
        self.base.update(
            XDG_RUNTIME_DIR=str(self.run_dir),
            XDG_DATA_HOME=str(tmp_path / "data"),
            PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
        )

    def __call__(
        self, home: Path, *args: str, env: dict | None = None, json_mode: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        cmd = [*IMSG, "--home", str(home), "--relay", self.url, *(["--json"] if json_mode else []), *args]
        return subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env={**self.base, **(env or {})},
        )


@pytest.fixture
def cli(tmp_path: Path, relay_proc):
    run_dir = Path(tempfile.mkdtemp(prefix="imsg-run-"))  # 0700, short (see the module doc)
    env = Env(tmp_path, run_dir, relay_proc.url)  # a relay of its own: the handles repeat
    yield env
    for home in tmp_path.glob("*"):  # never leave an unlock agent behind
        if (home / "storage-key").exists():
            env(home, "lock")
    shutil.rmtree(run_dir, ignore_errors=True)


def _until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Poll for `condition` (a generous timeout, for a loaded machine)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _has_open(pid: int, path: Path) -> bool:
    """Whether process `pid` has `path` open (Linux /proc)."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except FileNotFoundError:
        return False
    for fd in fds:
        try:
            if Path(os.readlink(fd)) == path:
                return True
        except OSError:
            continue
    return False


def _ok(r: subprocess.CompletedProcess) -> list[dict]:
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def _error(r: subprocess.CompletedProcess, code: int, error: str) -> dict:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == ""
    doc = json.loads(r.stderr.strip().splitlines()[-1])
    assert doc["error"] == error, doc
    return doc


def _pair(cli: Env, tmp_path: Path, name: str = "") -> tuple[Path, Path]:
    alice, bob = tmp_path / f"alice{name}", tmp_path / f"bob{name}"
    _ok(cli(alice, "init", f"alice{name}@example.com"))
    _ok(cli(bob, "init", f"bob{name}@example.com"))
    return alice, bob


def _snapshot(home: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_mode) for p in sorted(home.iterdir())}


def _secrets(home: Path) -> list[bytes]:
    """What a thief must not find: message text, handles, private keys, the relay token."""
    db = sqlite3.connect(home / "imsg.db")
    try:
        row = db.execute(
            "SELECT identity_private, signing_private, account_private, token, profile_key FROM account"
        ).fetchone()
    finally:
        db.close()
    keys = [k for k in row if isinstance(k, bytes) and k]
    return [
        SECRET.encode(),
        b"alice@example.com",
        b"bob@example.com",
        row[3].encode(),
        *keys,
        *[k.hex().encode() for k in keys],
    ]


def _grep(home: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for path in home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits += [f"{path.name}: {n[:16]!r}" for n in needles if n in data]
    return hits


def test_passcode_set_wrong_change_remove(cli: Env, tmp_path: Path):
    alice, bob = _pair(cli, tmp_path)
    _ok(cli(alice, "send", "bob@example.com", SECRET))
    assert [m["text"] for m in _ok(cli(bob, "receive"))] == [SECRET]
    secrets = _secrets(bob)
    assert _grep(bob, secrets)  # the grep sees plaintext when it is there

    assert _ok(cli(bob, "passcode", "set", env={"IMSG_NEW_PASSCODE": PASS})) == [{"passcode": True, "keyring": False}]
    assert _grep(bob, secrets) == []
    assert sorted(p.name for p in bob.iterdir()) == ["imsg.db", "lock", "storage-key"]

    # Locked, no passcode source, no terminal: exit 3 at once with a hint, no prompt.
    t0 = time.monotonic()
    doc = _error(cli(bob, "history", "alice@example.com"), 3, "locked")
    assert "imsg unlock" in doc["hint"] and time.monotonic() - t0 < 10

    before = _snapshot(bob)
    t0 = time.monotonic()
    _error(cli(bob, "history", "alice@example.com", env={"IMSG_PASSCODE": "wrong horse"}), 3, "wrong_passcode")
    first = time.monotonic() - t0
    t0 = time.monotonic()
    _error(cli(bob, "history", "alice@example.com", env={"IMSG_PASSCODE": "wrong horse"}), 3, "wrong_passcode")
    second = time.monotonic() - t0
    assert first >= 1.0 and second >= 2.0 and second > first  # the delay grows
    assert _snapshot(bob) == before  # byte-identical, same mtimes and modes

    pfile = tmp_path / "passcode.txt"
    pfile.write_text(PASS + "\n")
    pfile.chmod(0o600)
    hist = _ok(cli(bob, "--passcode-file", str(pfile), "history", "alice@example.com"))
    assert [m["text"] for m in hist] == [SECRET]

    # New messages arrive encrypted too (WAL included, checked while no process has it open).
    _ok(cli(alice, "send", "bob@example.com", "second secret: blue door"))
    assert [m["text"] for m in _ok(cli(bob, "receive", env={"IMSG_PASSCODE": PASS}))] == ["second secret: blue door"]
    assert _grep(bob, [*secrets, b"second secret: blue door"]) == []

    _ok(cli(bob, "passcode", "change", env={"IMSG_PASSCODE": PASS, "IMSG_NEW_PASSCODE": "new passcode 2"}))
    _error(cli(bob, "history", "alice@example.com", env={"IMSG_PASSCODE": PASS}), 3, "wrong_passcode")
    hist = _ok(cli(bob, "history", "alice@example.com", env={"IMSG_PASSCODE": "new passcode 2"}))
    assert [m["text"] for m in hist] == [SECRET, "second secret: blue door"]
    assert _grep(bob, secrets) == []

    _error(cli(bob, "passcode", "remove", env={"IMSG_PASSCODE": "not it"}), 3, "wrong_passcode")
    _ok(cli(bob, "passcode", "remove", env={"IMSG_PASSCODE": "new passcode 2"}))
    assert not (bob / "storage-key").exists()
    assert [m["text"] for m in _ok(cli(bob, "history", "alice@example.com"))] == [SECRET, "second secret: blue door"]
    _ok(cli(alice, "send", "bob@example.com", "after removal"))
    assert [m["text"] for m in _ok(cli(bob, "receive"))] == ["after removal"]


def test_unlock_for_a_while_then_lock(cli: Env, tmp_path: Path):
    alice, bob = _pair(cli, tmp_path)
    _ok(cli(bob, "passcode", "set", env={"IMSG_PASSCODE": PASS}))
    _error(cli(bob, "unlock", "--for", "1m", env={"IMSG_PASSCODE": "wrong horse"}), 3, "wrong_passcode")
    _error(cli(bob, "unlock", "--for", "3 weeks", env={"IMSG_PASSCODE": PASS}), 2, "usage")
    until = _ok(cli(bob, "unlock", "--for", "10m", env={"IMSG_PASSCODE": PASS}))[0]["unlocked_until"]
    assert until

    sock = next(cli.run_dir.joinpath("imsg").glob("agent-*.sock"))
    assert oct(sock.stat().st_mode & 0o777) == "0o600"
    _ok(cli(alice, "send", "bob@example.com", SECRET))
    assert [m["text"] for m in _ok(cli(bob, "receive"))] == [SECRET]  # no passcode needed now

    # A watch that got the key from the agent stops once the home is locked.
    watch = subprocess.Popen(
        [*IMSG, "--home", str(bob), "--json", "watch"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=cli.base,
        text=True,
    )
    try:
        # its database open means it has the key from the agent (nothing else could open it)
        _until(lambda: _has_open(watch.pid, (bob / "imsg.db").resolve()) or watch.poll() is not None, "the watch")
        assert watch.poll() is None, watch.stderr.read()
        assert _ok(cli(bob, "lock")) == [{"locked": True, "was_unlocked": True}]
        _ok(cli(alice, "send", "bob@example.com", "wake the watch"))  # ends its long poll
        assert watch.wait(30) == 3
        assert "this home was locked" in json.loads(watch.stderr.read().strip().splitlines()[-1])["message"]
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
        watch.stdout.close()
        watch.stderr.close()
    assert not sock.exists()
    _error(cli(bob, "history", "alice@example.com"), 3, "locked")
    assert _ok(cli(bob, "lock")) == [{"locked": True, "was_unlocked": False}]

    _ok(cli(bob, "unlock", "--for", "10m", env={"IMSG_PASSCODE": PASS}))
    _error(cli(bob, "passcode", "remove"), 3, "locked")  # unlocked is not enough to remove it
    _ok(cli(bob, "passcode", "change", env={"IMSG_PASSCODE": PASS, "IMSG_NEW_PASSCODE": "changed passcode"}))
    _ok(cli(bob, "history", "alice@example.com"))  # still unlocked, under the new key
    # 5 s: long enough for the next command to start on a loaded machine, short enough to wait out
    _ok(cli(bob, "unlock", "--for", "5s", env={"IMSG_PASSCODE": "changed passcode"}))
    _ok(cli(bob, "history", "alice@example.com"))
    _until(lambda: not sock.exists(), "the agent to exit at its deadline")
    _error(cli(bob, "history", "alice@example.com"), 3, "locked")


def test_keyring_opt_in(cli: Env, tmp_path: Path):
    _, bob = _pair(cli, tmp_path)
    ring = {"PYTHON_KEYRING_BACKEND": "keyrings.alt.file.PlaintextKeyring"}
    assert _ok(cli(bob, "passcode", "set", "--keyring", env={**ring, "IMSG_NEW_PASSCODE": PASS})) == [
        {"passcode": True, "keyring": True}
    ]
    assert _ok(cli(bob, "whoami", env=ring))[0]["handle"] == "bob@example.com"  # no passcode typed
    _error(cli(bob, "whoami"), 3, "locked")  # a keyring that does not have it: locked
    # change, remove and unlock want the passcode itself: the keyring (or an agent) is not enough
    _error(
        cli(bob, "passcode", "change", "--no-keyring", env={**ring, "IMSG_NEW_PASSCODE": "another one"}), 3, "locked"
    )
    _ok(
        cli(
            bob,
            "passcode",
            "change",
            "--no-keyring",
            env={**ring, "IMSG_PASSCODE": PASS, "IMSG_NEW_PASSCODE": "another one"},
        )
    )
    _error(cli(bob, "whoami", env=ring), 3, "locked")


def test_passcode_usage_errors(cli: Env, tmp_path: Path):
    home = tmp_path / "solo"
    _error(cli(home, "passcode", "set"), 2, "usage")  # no new passcode and no terminal
    _error(cli(home, "passcode", "set", env={"IMSG_NEW_PASSCODE": "abc"}), 2, "usage")  # too short
    _error(cli(home, "passcode", "change", env={"IMSG_PASSCODE": PASS}), 3, "local_state")  # none set
    _error(cli(home, "lock"), 3, "local_state")
    _error(cli(home, "unlock"), 3, "local_state")
    _error(cli(home, "--passcode-file", str(tmp_path / "missing"), "passcode", "set"), 2, "usage")
    _ok(cli(home, "passcode", "set", env={"IMSG_NEW_PASSCODE": PASS}))
    _error(cli(home, "passcode", "set", env={"IMSG_NEW_PASSCODE": PASS}), 3, "local_state")  # already


def test_retention_commands(cli: Env, tmp_path: Path):
    _, bob = _pair(cli, tmp_path)
    assert _ok(cli(bob, "retention", "show")) == [{"retention": "forever"}]
    assert _ok(cli(bob, "retention", "set", "30d", "--yes")) == [{"retention": "30d", "deleted": 0}]
    assert _ok(cli(bob, "retention", "show")) == [{"retention": "30d"}]
    _error(cli(bob, "retention", "set", "2w"), 2, "usage")
    assert _ok(cli(bob, "retention", "set", "forever")) == [{"retention": "forever", "deleted": 0}]
    r = cli(bob, "retention", "--help", json_mode=False)
    assert r.returncode == 0 and "forever" in r.stdout and "default" in r.stdout
    r = cli(bob, "unlock", "--help", json_mode=False)
    assert r.returncode == 0 and "agent" in r.stdout and "imsg lock" in r.stdout


def _on_a_terminal(cli: Env, home: Path, args: list[str], typed: list[str], timeout: float = 60) -> tuple[int, str]:
    """`imsg --home HOME ARGS` on a pseudo-terminal, typing `typed` (support/tty.py)."""
    return on_a_terminal([*IMSG, "--home", str(home), *args], cli.base, typed, timeout)


def test_passcode_prompts_on_a_terminal(cli: Env, tmp_path: Path):
    home = tmp_path / "tty"
    code, out = _on_a_terminal(cli, home, ["passcode", "set"], ["typed passcode", "typed passcode"])
    assert code == 0, out
    assert "typed passcode" not in out  # not echoed
    code, out = _on_a_terminal(cli, home, ["retention", "show"], ["wrong one", "typed passcode"])
    assert code == 0 and "forever" in out and "wrong passcode" not in out.split("forever")[-1], out
    code, out = _on_a_terminal(cli, home, ["passcode", "set"], [])
    assert code == 3, out  # already set
    code, out = _on_a_terminal(cli, home, ["passcode", "change"], ["typed passcode", "new one 1", "new one 2"])
    assert code == 2 and "differ" in out, out  # the two new passcodes differ: nothing changed
    _ok(cli(home, "retention", "show", env={"IMSG_PASSCODE": "typed passcode"}))


def test_passcode_prompts_explain_themselves(cli: Env, tmp_path: Path):
    """Issue 18 item 9: a too-short passcode is refused before it is asked again; a wrong
    one at a terminal says so, with how long the wait is and why."""
    home = tmp_path / "tty"
    code, out = _on_a_terminal(cli, home, ["passcode", "set"], ["abc", "long enough", "long enough"])
    assert code == 0, out
    short = out.index("at least 4 characters")
    assert short < out.index("new passcode again") and out.count("new passcode: ") == 2, out
    code, out = _on_a_terminal(cli, home, ["retention", "show"], ["wrong one", "long enough"])
    assert code == 0 and "forever" in out, out
    assert "wrong passcode (2 more tries)" in out and "waiting 1 s before the next try" in out, out
    assert out.index("waiting 1 s") < out.rindex("passcode for")  # explained before the prompt returns
