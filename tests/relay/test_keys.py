"""Shared key material: `imsg-relay keys init|show-fingerprint`, workers loading one key set
from a file or the environment, and the database's fingerprint refusing a worker whose keys
differ (issue 16: two workers with keys of their own split the relay in two, silently)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import httpx
import pytest

from imsg_relay.cli import main
from imsg_relay.keyset import KeySet, KeySetError
from imsg_relay.settings import Settings

from .helpers import private_lookup, register
from .test_backends import make_schema, pg_url
from .test_postgres import pg_reason
from support.relays import FAST_LIMITS_ENV, LISTENING, ProcessRelay


def _keys(tmp_path, name: str) -> str:
    path = tmp_path / name
    assert main(["keys", "init", "--out", str(path)]) == 0
    return str(path)


def test_keys_init_writes_a_private_file_it_never_overwrites(tmp_path, capsys):
    path = _keys(tmp_path, "relay.keys")
    out = capsys.readouterr().out
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    fingerprint = KeySet.read(tmp_path / "relay.keys").fingerprint().hex()
    assert fingerprint in out
    assert main(["keys", "init", "--out", path]) == 2
    assert "never overwritten" in capsys.readouterr().err
    assert main(["keys", "show-fingerprint", "--keys", path]) == 0
    assert capsys.readouterr().out.strip() == fingerprint


def test_the_environment_carries_the_same_key_set(tmp_path):
    path = tmp_path / "k"
    keys = KeySet.generate()
    keys.write_new(path)
    one_line = " ".join(line for line in path.read_text().splitlines() if not line.startswith("#"))
    from imsg_relay.keyset import load_key_set

    from_env = load_key_set(Settings.from_env({"IMSG_RELAY_KEYS": one_line}, data_dir=tmp_path / "d"))
    from_file = load_key_set(Settings(data_dir=tmp_path / "d", keys_file=path))
    assert from_env.fingerprint() == from_file.fingerprint() == keys.fingerprint()
    assert not (tmp_path / "d").exists()  # nothing made in the data directory


@pytest.mark.parametrize(
    "text, problem",
    [
        ("relay_secret=00", "not 32 bytes"),
        ("nonsense=1", "is not relay_secret"),
        (f"relay_secret={'00' * 32} discovery_seed={'11' * 32}", "no sealed_key"),
        (f"relay_secret={'zz' * 32}", "not hex"),
    ],
)
def test_a_bad_key_set_is_refused_clearly(text, problem):
    with pytest.raises(KeySetError) as refused:
        KeySet.parse(text, "IMSG_RELAY_KEYS")
    assert problem in str(refused.value)


def test_a_key_file_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "k"
    KeySet.generate().write_new(path)
    path.chmod(0o644)
    with pytest.raises(KeySetError, match="chmod 600"):
        KeySet.read(path)


def test_an_sqlite_relay_refuses_other_keys_than_its_own(tmp_path):
    """The embedded relay records its data-directory keys' fingerprint; started again with
    an operator's key set, it refuses (its handles were blinded under the old keys)."""
    data = tmp_path / "data"
    first = ProcessRelay(data).start()
    assert first.stop() == 0
    keys = _keys(tmp_path, "other.keys")
    done = subprocess.run(
        [sys.executable, "-m", "imsg_relay.cli", "serve", "--port", "0", "--data", str(data), "--keys", keys],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **FAST_LIMITS_ENV},
    )
    assert done.returncode == 2 and LISTENING not in done.stdout
    assert "not the ones the database was created under" in done.stderr


@pytest.mark.postgres
@pytest.mark.skipif(pg_reason is not None, reason=pg_reason or "")
def test_workers_on_one_database_share_keys_or_refuse_to_start(tmp_path, pg_ns):
    make_schema(pg_ns)
    url = pg_url(pg_ns)
    shared, other = _keys(tmp_path, "shared.keys"), _keys(tmp_path, "other.keys")

    def worker(name: str, keys: str | None) -> ProcessRelay:
        args = ("--database", url, "--database-pool", "4") + (("--keys", keys) if keys else ())
        return ProcessRelay(tmp_path / name, args=args)

    a = worker("a", shared).start()
    try:
        # Other keys, or none (each worker making its own, the split brain of issue 16):
        # refused before it listens, with the reason.
        for name, keys in (("b", other), ("c", None)):
            w = worker(name, keys)
            with pytest.raises(RuntimeError) as refused:
                w.start()
            assert "not the ones the database was created under" in w.log() + str(refused.value)
        # The same key set through the environment: one relay, found through either worker.
        text = open(shared).read()
        b = ProcessRelay(
            tmp_path / "d", args=("--database", url, "--database-pool", "4"), env={"IMSG_RELAY_KEYS": text}
        ).start()
        try:
            with httpx.Client(base_url=a.url, timeout=10) as ca, httpx.Client(base_url=b.url, timeout=10) as cb:
                alice = register(ca, "alice@example.com")
                bob = register(cb)
                assert private_lookup(cb, bob, "alice@example.com") == alice.account_id
                assert private_lookup(ca, bob, "alice@example.com") == alice.account_id
                assert ca.get("/v1/sealed/keys").json() == cb.get("/v1/sealed/keys").json()
        finally:
            b.stop()
    finally:
        a.stop()


def test_rotating_the_sealed_key_in_a_key_set_keeps_its_fingerprint(tmp_path, capsys):
    path = _keys(tmp_path, "k")
    before = KeySet.read(tmp_path / "k")
    assert main(["rotate-sealed-key", "--keys", path]) == 0
    after = KeySet.read(tmp_path / "k")
    assert len(after.sealed_keys) == 2 and after.fingerprint() == before.fingerprint()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
