"""Encryption-at-rest and retention timings (run by scripts/bench_vault)."""

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
IMSG = [str(BIN / "imsg")] if (BIN / "imsg").exists() else [sys.executable, "-m", "imsg_cli.main"]
PASS = "bench passcode 1"
DAY = 24 * 3600 * 1000


def median_ms(fn, runs: int = RUNS) -> tuple[float, float, float]:
    xs = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        xs.append((time.perf_counter() - t0) * 1000)
    return statistics.median(xs), min(xs), max(xs)


def row(label: str, stats: tuple[float, float, float]) -> None:
    print(f"{label:<52} {stats[0]:>9.3f} {stats[1]:>9.3f} {stats[2]:>9.3f}")


def main() -> int:
    from imsg.client import Client
    from imsg.store import vault, vault_agent

    work = Path(tempfile.mkdtemp(prefix="imsg-bench-vault-"))
    run_dir = work / "run"
    run_dir.mkdir(mode=0o700)
    os.environ["XDG_RUNTIME_DIR"] = str(run_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMSG_")}
    relay = None
    try:
        kf = vault.KeyFile(os.urandom(16), b"", b"", b"", b"")
        print(f"imsg encryption at rest, ms (median/min/max of {RUNS} runs)")
        print(f"Argon2id m={kf.memory_kib // 1024} MiB, t={kf.iterations}, p={kf.lanes}; {os.cpu_count()} CPUs")
        print(f"{'what':<52} {'median':>9} {'min':>9} {'max':>9}")
        print("-" * 82)
        row("Argon2id derive (one unlock)", median_ms(lambda: vault.derive_kek(PASS, kf), max(5, RUNS // 3)))

        from cli import start_relay  # scripts/bench/cli.py, beside this file

        relay, url = start_relay(work, env)
        homes = {name: work / name for name in ("plain", "locked", "bob")}
        for name, home in homes.items():
            subprocess.run(
                IMSG + ["--home", str(home), "--relay", url, "init", f"{name}@example.com"],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
        for home in (homes["plain"], homes["locked"]):  # make the sessions: time the steady state
            subprocess.run(
                IMSG + ["--home", str(home), "send", "bob@example.com", "warm-up"],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        vault.set_passcode(homes["locked"], PASS)

        row("open plain home (Client.open, in process)", median_ms(lambda: Client.open(homes["plain"]).close()))
        keys = lambda: vault.KeySource(passcode=PASS)  # noqa: E731
        row(
            "open passcode home with IMSG_PASSCODE (in process)",
            median_ms(lambda: Client.open(homes["locked"], keys=keys()).close(), max(5, RUNS // 3)),
        )
        key = vault.current_key(homes["locked"], keys())
        vault_agent.start(homes["locked"], key, int((time.time() + 600) * 1000))
        row(
            "open passcode home, unlocked (agent, in process)",
            median_ms(lambda: Client.open(homes["locked"], keys=vault.KeySource()).close()),
        )
        vault_agent.stop(homes["locked"])

        def send(home: Path, extra: dict) -> None:
            r = subprocess.run(
                IMSG + ["--home", str(home), "send", "bob@example.com", "x" * 200],
                env={**env, **extra},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            if r.returncode:
                raise SystemExit(f"bench: send failed: {r.stderr.decode()[-300:]}")

        row("imsg send, plain home (cold process)", median_ms(lambda: send(homes["plain"], {})))
        row(
            "imsg send, passcode home, IMSG_PASSCODE (cold)",
            median_ms(lambda: send(homes["locked"], {"IMSG_PASSCODE": PASS})),
        )
        subprocess.run(
            IMSG + ["--home", str(homes["locked"]), "unlock", "--for", "10m"],
            env={**env, "IMSG_PASSCODE": PASS},
            check=True,
            stderr=subprocess.DEVNULL,
        )
        row("imsg send, passcode home, unlocked (cold)", median_ms(lambda: send(homes["locked"], {})))
        subprocess.run(IMSG + ["--home", str(homes["locked"]), "lock"], env=env, check=True, stderr=subprocess.DEVNULL)
        row("imsg --help", median_ms(lambda: subprocess.run(IMSG + ["--help"], env=env, stdout=subprocess.DEVNULL)))

        retention_rows(work)
    finally:
        if relay is not None and relay.poll() is None:
            relay.send_signal(signal.SIGTERM)
            relay.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


def retention_rows(work: Path) -> None:
    from imsg.client import retention
    from imsg.protocol.stores import StoredMessage
    from imsg.store.sqlite import SQLiteStore

    store = SQLiteStore(work / "big" / "imsg.db")
    now = 1_800_000_000_000
    with store.transaction():
        for i in range(100_000):
            t = now - (i % 20) * DAY  # all within 20 days
            store.add_message(
                StoredMessage(
                    f"{i:032x}",
                    "p" * 32,
                    "peer@example.com",
                    "in",
                    "peer@example.com",
                    "me@example.com",
                    "m" * 80,
                    t,
                    t,
                    1,
                )
            )
    store.set_setting(retention.SETTING, "30d")
    row("retention check, 100,000 messages, none due", median_ms(lambda: retention.sweep(store, now), RUNS * 10))
    t0 = time.perf_counter()
    deleted = retention.sweep(store, now + 20 * DAY)  # those older than 10 days are due now
    row(f"retention sweep deleting {deleted:,} messages", ((time.perf_counter() - t0) * 1000,) * 3)
    store.close()


if __name__ == "__main__":
    sys.exit(main())
