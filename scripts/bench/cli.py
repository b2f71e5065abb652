"""Cold-process timings of the `imsg` command (run by scripts/bench_cli).

- `python -c pass`: the floor any Python CLI pays;
- `imsg --help`: start-up (target <= 150 ms, median of N runs);
- `imsg send` to a running relay: a whole send in a fresh process (target <= 300 ms).
A relay subprocess and two homes live in a temp dir that is removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = int(os.environ.get("BENCH_RUNS", "15"))
BIN = Path(sys.executable).parent
IMSG = str(BIN / "imsg") if (BIN / "imsg").exists() else None


WARMUP = 2


def timed(cmd: list[str], env: dict[str, str], runs: int, warmup: int = WARMUP) -> list[float]:
    out = []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        elapsed = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"bench: {' '.join(cmd)} failed ({r.returncode}): {r.stderr.decode()[-400:]}")
        if i >= warmup:
            out.append(elapsed * 1000)
    return out


def start_relay(work: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """A relay subprocess on a free loopback port, data in `work/relay`, rate limits off."""
    relay = subprocess.Popen(
        [sys.executable, "-m", "imsg_relay.cli", "serve", "--port", "0", "--data", str(work / "relay")],
        stdout=subprocess.PIPE,
        stderr=open(work / "relay.log", "wb"),
        env={
            **env,
            "IMSG_RELAY_SEND_RATE": "100000",
            "IMSG_RELAY_REQUEST_RATE": "100000",
            "IMSG_RELAY_LOOKUP_RATE": "100000",
            "IMSG_RELAY_REGISTER_RATE": "100000",
        },
    )
    line = relay.stdout.readline().decode()
    if "listening on" not in line:
        raise SystemExit(f"bench: relay did not start: {line!r}")
    return relay, line.split()[-1]


def main() -> int:
    imsg = [IMSG] if IMSG else [sys.executable, "-m", "imsg_cli.main"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMSG_")}
    work = Path(tempfile.mkdtemp(prefix="imsg-bench-"))
    relay = None
    try:
        relay, url = start_relay(work, env)
        alice, bob = work / "alice", work / "bob"
        for home, handle in ((alice, "alice@example.com"), (bob, "bob@example.com")):
            subprocess.run(
                imsg + ["--home", str(home), "--relay", url, "init", handle],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
        # The first send makes the session (a prekey fetch); time the steady state after it.
        subprocess.run(
            imsg + ["--home", str(alice), "send", "bob@example.com", "warm-up"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        floor = timed([sys.executable, "-c", "pass"], env, RUNS)
        helps = timed(imsg + ["--help"], env, RUNS)
        sends = timed(imsg + ["--home", str(alice), "send", "bob@example.com", "x" * 200], env, RUNS)
        # Everything sent arrived (the timing counted only sends the relay accepted).
        r = subprocess.run(
            imsg + ["--home", str(bob), "--json", "receive"], env=env, capture_output=True, text=True, check=True
        )
        received = len(r.stdout.splitlines())
    finally:
        if relay is not None and relay.poll() is None:
            relay.send_signal(signal.SIGTERM)
            try:
                relay.wait(10)
            except subprocess.TimeoutExpired:
                relay.kill()
                relay.wait(5)
        shutil.rmtree(work, ignore_errors=True)

    def row(label, xs, target=None):
        med = statistics.median(xs)
        ok = "" if target is None else ("yes" if med <= target else "NO")
        tgt = "-" if target is None else f"<={target}"
        print(f"{label:<34} {med:>8.1f} {min(xs):>8.1f} {max(xs):>8.1f} {tgt:>8}  {ok}")
        return target is None or med <= target

    print(f"imsg CLI cold-process timings, ms ({RUNS} runs each, after {WARMUP} warm-ups; {' '.join(imsg)})")
    print(f"{'command':<34} {'median':>8} {'min':>8} {'max':>8} {'target':>8}  ok")
    print("-" * 74)
    row("python -c pass (floor)", floor)
    good = row("imsg --help", helps, 150)
    good &= row("imsg send (relay on loopback)", sends, 300)
    expected = 1 + WARMUP + RUNS  # the session warm-up, the timing warm-ups, the timed sends
    print(f"bob received {received} of {expected} messages sent")
    return 0 if good and received == expected else 1


if __name__ == "__main__":
    sys.exit(main())
