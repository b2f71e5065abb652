"""Run `imsg` as a person does: with a pseudo-terminal as its stdin, stdout and stderr,
typing an answer at each prompt it shows."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time


def on_a_terminal(cmd: list[str], env: dict[str, str], typed: list[str], timeout: float = 60) -> tuple[int, str]:
    """Run `cmd` on a pty and type `typed`, one line at each prompt (output ending in ": "
    since the last answer); returns (exit code, everything it wrote)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
    os.close(slave)
    seen, fresh, deadline, answers = b"", b"", time.monotonic() + timeout, list(typed)
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the child closed its side
                    break
                seen, fresh = seen + chunk, fresh + chunk
                if answers and fresh.endswith(b": "):  # a prompt: answer it once
                    os.write(master, answers.pop(0).encode() + b"\n")
                    fresh = b""
            elif proc.poll() is not None:
                break
        return proc.wait(max(5.0, deadline - time.monotonic())), seen.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
