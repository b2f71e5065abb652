"""The unlock agent: `imsg unlock --for 15m` keeps a home's storage key in the memory of a
small per-user process, so commands in the next 15 minutes need no passcode; `imsg lock`
(or the deadline, or a reboot) ends it.

Why a process and not a file: a key written to disk (even to a tmpfs) is readable by
anything that can read files as the user, survives the process that wrote it, and ends up
in backups; a process holding it in memory ends with its deadline and leaves nothing. The
agent:
- listens on `agent-<home id>.sock` in the runtime dir (imsg.store.runtime: a 0700
  directory of this user), created 0600; it also checks each caller's uid with
  SO_PEERCRED and answers only its own user;
- marks itself non-dumpable (no core file, no ptrace attach by other processes of the
  same user that lack CAP_SYS_PTRACE) and sets its core limit to 0;
- exits at its deadline, on `lock`, or when its socket is removed, and wipes its copy of
  the key (best effort in Python) and its socket on the way out.

Wire: one request line per connection, one JSON answer line. `key` -> {"key": hex,
"until": ms}; `status` -> {"until": ms}; `lock` -> {"locked": true} and exit.

Run as `python -m imsg.store.vault_agent SOCKET DEADLINE_MS`; it reads the key (hex, one
line) from stdin and prints `ready` once the socket is listening. Until then its stderr is a
pipe to the command that started it, which shows the last lines if the agent fails to start;
after `ready` it points at /dev/null, since the agent outlives that command.

A socket's path must fit `sun_path` (108 bytes on Linux, 104 on macOS and the BSDs, the
terminating NUL included), so `start` refuses a longer one with an error naming the path
before it starts anything: a long `$XDG_RUNTIME_DIR` or `$TMPDIR` is the usual cause.
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import TypedDict

from imsg import errors

_TIMEOUT_S = 2.0
_MAX_REQUEST = 64
# Bytes a socket path may have: sizeof(sun_path) less the terminating NUL.
MAX_SOCKET_PATH = 107 if sys.platform.startswith("linux") else 103
# How long `start` waits for `ready`: a cold interpreter takes well under a second, a loaded
# machine several; an agent that never answers must not hang `imsg unlock` for ever.
_START_TIMEOUT_S = 30.0
_STDERR_LINES = 5  # of a failed agent's stderr, shown in the error


def socket_path(home: Path) -> Path:
    from imsg.store.runtime import home_id, runtime_dir

    return runtime_dir() / f"agent-{home_id(Path(home).expanduser())}.sock"


class Answer(TypedDict, total=False):
    """What the agent answers (see the module doc); a caller checks each field it reads."""

    key: str  # hex
    until: int  # ms
    locked: bool
    error: str


def check_socket_path(path: Path) -> None:
    """LocalStateError when `path` is too long to bind a Unix socket to (see the module doc)."""
    size = len(os.fsencode(path))
    if size > MAX_SOCKET_PATH:
        raise errors.LocalStateError(
            f"the unlock agent's socket path is {size} bytes, more than the {MAX_SOCKET_PATH} "
            f"a Unix socket allows: {_printable(str(path))}",
            hint="set XDG_RUNTIME_DIR to a shorter private directory (mode 0700, yours), e.g. /run/user/$UID",
        )


def _ask(home: Path, request: str) -> dict[str, object] | None:
    path = socket_path(home)
    if not path.exists():
        return None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(_TIMEOUT_S)
    try:
        s.connect(str(path))
        s.sendall(request.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n") and len(data) < 4096:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        answer = json.loads(data)
        return answer if isinstance(answer, dict) else None
    except (OSError, ValueError):
        return None  # no agent (a stale socket from a crash), or not ours to trust
    finally:
        s.close()


def fetch_key(home: Path) -> bytes | None:
    answer = _ask(home, "key")
    text = answer.get("key") if answer else None
    try:
        key = bytes.fromhex(text) if isinstance(text, str) else None
    except ValueError:
        return None
    return key if key is not None and len(key) == 32 else None


def deadline(home: Path) -> int | None:
    """Until when (ms) the home is unlocked, or None if no agent holds it."""
    answer = _ask(home, "status")
    until = answer.get("until") if answer else None
    return until if isinstance(until, int) else None


def stop(home: Path) -> bool:
    """Lock: end the agent of `home`. True if one was running."""
    answer = _ask(Path(home), "lock")
    return bool(answer and answer.get("locked"))


def start(home: Path, key: bytes, until_ms: int) -> None:
    """Start an agent holding `key` until `until_ms` (replacing a running one)."""
    path = socket_path(home)
    check_socket_path(path)
    stop(home)
    proc = subprocess.Popen(
        [sys.executable, "-m", "imsg.store.vault_agent", str(path), str(until_ms)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,  # read only if it fails to start; it points elsewhere after `ready`
        start_new_session=True,
        close_fds=True,
        cwd="/",  # survives this command and its terminal
        # without IMSG_PASSCODE & co: the agent outlives this command, its environment must not
        # carry the passcode for hours
        env={k: v for k, v in os.environ.items() if not k.startswith("IMSG_")},
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None  # all three are PIPE
    try:
        try:
            proc.stdin.write(key.hex().encode() + b"\n")
            proc.stdin.close()  # through a pipe: never on a command line or in the environment
        except BrokenPipeError:
            pass  # it died before reading the key: its stderr says why
        readable, _, _ = select.select([proc.stdout], [], [], _START_TIMEOUT_S)
        line = proc.stdout.readline() if readable else b""
        if line.strip() == b"ready":
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        why = _tail(proc.stderr.read())
    finally:
        proc.stdout.close()
        proc.stderr.close()
    if not readable:
        reason = f"no answer within {_START_TIMEOUT_S:.0f} s"
    elif proc.returncode >= 0:
        reason = f"exit status {proc.returncode}"
    else:
        reason = f"signal {-proc.returncode}"
    raise errors.LocalStateError(f"the unlock agent did not start ({reason})" + (f": {why}" if why else ""))


def _tail(stderr: bytes) -> str:
    """The last lines of a failed agent's stderr, safe to print at a terminal."""
    lines = [ln for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    return " | ".join(_printable(ln.strip()) for ln in lines[-_STDERR_LINES:])


def _printable(text: str) -> str:
    """`text` with control characters escaped, so it cannot drive a terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


# --- the agent process ---


def _harden() -> None:
    import ctypes
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4: no core, no same-user ptrace
    except (OSError, AttributeError):
        pass  # not Linux: the 0600 socket and the uid check still hold


def _peer_uid(conn: socket.socket) -> int:
    so_peercred: int | None = getattr(socket, "SO_PEERCRED", None)
    if so_peercred is None:
        return os.getuid()  # the socket's 0600 mode in a 0700 directory is the check there
    _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, so_peercred, struct.calcsize("3i")))
    return int(uid)


def serve(path: Path, until_ms: int, key: bytearray) -> int:
    """Serve `key` on `path` until the deadline or `lock`; 1 if it cannot listen there."""
    old = os.umask(0o177)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        path.unlink(missing_ok=True)
        server.bind(str(path))
        server.listen(8)
        ident = path.stat().st_ino
    except OSError as exc:
        server.close()
        _wipe(key)
        print(f"imsg unlock agent: cannot listen on {path}: {exc.strerror or exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        os.umask(old)
    print("ready", flush=True)
    _detach_output()
    try:
        while True:
            left = until_ms / 1000 - time.time()
            if left <= 0:
                return 0
            readable, _, _ = select.select([server], [], [], min(left, 5.0))
            try:
                if path.stat().st_ino != ident:
                    return 0  # our socket was removed or replaced: someone else owns the name now
            except FileNotFoundError:
                return 0
            if not readable:
                continue
            conn, _ = server.accept()
            with conn:
                conn.settimeout(_TIMEOUT_S)
                if _peer_uid(conn) != os.getuid():
                    continue
                try:
                    request = conn.recv(_MAX_REQUEST).strip()
                except OSError:
                    continue
                answer: Answer
                if request == b"key":
                    answer = {"key": key.hex(), "until": until_ms}
                elif request == b"status":
                    answer = {"until": until_ms}
                elif request == b"lock":
                    _unlink_own(path, ident)  # gone before the answer: `lock` returns with no socket left
                    _send(conn, {"locked": True})
                    return 0
                else:
                    answer = {"error": "unknown request"}
                _send(conn, answer)
    finally:
        _wipe(key)
        _unlink_own(path, ident)
        server.close()


def _wipe(key: bytearray) -> None:
    for i in range(len(key)):
        key[i] = 0


def _detach_output() -> None:
    """After `ready`: stdout and stderr to /dev/null. The command that started us closes its
    ends of both pipes and exits; a later write must not fail on a closed pipe."""
    sys.stdout.flush()
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)


def _unlink_own(path: Path, ident: int) -> None:
    """Remove our socket, never one a newer agent has bound to the same name since."""
    try:
        if path.stat().st_ino == ident:
            path.unlink()
    except FileNotFoundError:
        pass


def _send(conn: socket.socket, answer: Answer) -> None:
    try:
        conn.sendall(json.dumps(answer).encode() + b"\n")
    except OSError:
        pass


def main(argv: list[str]) -> int:
    _harden()
    path, until_ms = Path(argv[0]), int(argv[1])
    try:
        key = bytearray(bytes.fromhex(sys.stdin.readline().strip()))
    except ValueError:
        key = bytearray()
    sys.stdin.close()
    if len(key) != 32:
        print("imsg unlock agent: expected a 32-byte key in hex on stdin", file=sys.stderr, flush=True)
        return 2
    return serve(path, until_ms, key)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
