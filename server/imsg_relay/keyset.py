"""The relay's key set: every secret that all workers of one relay must share.

- `relay_secret` (32 bytes) keys the hashes of pending verification codes;
- `discovery_seed` (32 bytes) derives the OPRF key that blinds handles;
- `sealed_key` (Ed25519, one or more, oldest first) signs sender certificates.

Two workers on one database with different key sets split the relay in two (a handle
registered through one is "not registered" through the other), so a scale-out operator
makes one key set (`imsg-relay keys init --out FILE`) and gives it to every worker, as a
file (`--keys FILE`, IMSG_RELAY_KEYS_FILE) or as the file's text in IMSG_RELAY_KEYS. The
embedded single-worker relay keeps making its keys in its data directory, as before.

The database keeps the key set's fingerprint (never a key): the first worker records it, and
a worker whose keys give another fingerprint refuses to start (`KeyMismatch`).

File format: `name=hex` tokens separated by whitespace (lines or one line, so the text fits
in an environment variable), `#` comment lines ignored.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from imsg_relay.blinding import load_or_create_secret
from imsg_relay.sealed import KEYS_FILE, load_or_create_keys
from imsg_relay.settings import Settings

LABEL_FINGERPRINT = b"imsg/v1/relay-key-set-fingerprint"
SECRET_BYTES = 32


class KeySetError(Exception):
    """the key set given to the relay is unusable"""


class KeyMismatch(Exception):
    """this worker's key set is not the one the database was created under"""


@dataclass(frozen=True)
class KeySet:
    relay_secret: bytes = field(repr=False)
    discovery_seed: bytes = field(repr=False)
    sealed_keys: tuple[Ed25519PrivateKey, ...] = field(repr=False)

    @classmethod
    def generate(cls) -> KeySet:
        return cls(
            secrets.token_bytes(SECRET_BYTES), secrets.token_bytes(SECRET_BYTES), (Ed25519PrivateKey.generate(),)
        )

    def fingerprint(self) -> bytes:
        """SHA-256 over the secrets and the first (root) sealed-sender key: rotating the
        sealed-sender key appends to the chain and keeps the fingerprint."""
        root = self.sealed_keys[0].private_bytes_raw()
        return hashlib.sha256(LABEL_FINGERPRINT + self.relay_secret + self.discovery_seed + root).digest()

    def text(self) -> str:
        lines = [
            "# imsg-relay key set: every worker of one relay needs exactly this; keep it secret (0600)",
            f"# fingerprint {self.fingerprint().hex()}",
            f"relay_secret={self.relay_secret.hex()}",
            f"discovery_seed={self.discovery_seed.hex()}",
        ]
        lines += [f"sealed_key={k.private_bytes_raw().hex()}" for k in self.sealed_keys]
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str, where: str) -> KeySet:
        values: dict[str, list[bytes]] = {}
        for line in text.splitlines():
            if line.lstrip().startswith("#"):
                continue
            for token in line.split():
                name, sep, value = token.partition("=")
                if not sep or name not in ("relay_secret", "discovery_seed", "sealed_key"):
                    raise KeySetError(f"{where}: {name!r} is not relay_secret=, discovery_seed= or sealed_key=")
                try:
                    raw = bytes.fromhex(value)
                except ValueError:
                    raise KeySetError(f"{where}: {name} is not hex") from None
                if len(raw) != SECRET_BYTES:
                    raise KeySetError(f"{where}: {name} is not {SECRET_BYTES} bytes")
                values.setdefault(name, []).append(raw)
        for name in ("relay_secret", "discovery_seed", "sealed_key"):
            if name not in values:
                raise KeySetError(f"{where}: no {name}")
        for name in ("relay_secret", "discovery_seed"):
            if len(values[name]) > 1:
                raise KeySetError(f"{where}: more than one {name}")
        return cls(
            values["relay_secret"][0],
            values["discovery_seed"][0],
            tuple(Ed25519PrivateKey.from_private_bytes(k) for k in values["sealed_key"]),
        )

    @classmethod
    def read(cls, path: Path) -> KeySet:
        try:
            mode = path.stat().st_mode
            text = path.read_text()
        except OSError as exc:
            raise KeySetError(f"cannot read the key set {path}: {exc.strerror}") from None
        if mode & 0o077:
            raise KeySetError(f"the key set {path} is readable by others; chmod 600 it")
        return cls.parse(text, str(path))

    def with_new_sealed_key(self) -> KeySet:
        """The same set with a new sealed-sender key appended (it signs once workers restart
        with it; the fingerprint stays, as the chain's root does)."""
        return KeySet(self.relay_secret, self.discovery_seed, (*self.sealed_keys, Ed25519PrivateKey.generate()))

    def replace(self, path: Path) -> None:
        """Rewrite the key set file at `path` atomically (0600)."""
        _replace_file(path, self.text().encode())

    def write_new(self, path: Path) -> None:
        """A new 0600 file; never overwrites one (that would orphan a relay's handles)."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise KeySetError(f"{path} exists; a key set is never overwritten") from None
        try:
            os.write(fd, self.text().encode())
            os.fsync(fd)
        finally:
            os.close(fd)


def _replace_file(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)  # never a half-written key set


def operator_key_set(settings: Settings) -> KeySet | None:
    """The key set the operator gave (IMSG_RELAY_KEYS text, else --keys FILE), or None."""
    if settings.keys:
        return KeySet.parse(settings.keys, "IMSG_RELAY_KEYS")
    if settings.keys_file is not None:
        return KeySet.read(settings.keys_file)
    return None


def load_key_set(settings: Settings, create: Callable[[Path], bytes] = load_or_create_secret) -> KeySet:
    """The operator's key set, else the data directory's (made on first start there)."""
    given = operator_key_set(settings)
    if given is not None:
        return given
    sealed = settings.sealed_keys_file or settings.data_dir / KEYS_FILE
    return KeySet(
        create(settings.secret_path),
        create(settings.discovery_key_path),
        tuple(load_or_create_keys(Path(sealed))),
    )


def check_fingerprint(stored: bytes, mine: bytes) -> None:
    if stored != mine:
        raise KeyMismatch(
            f"this worker's keys (fingerprint {mine.hex()[:16]}) are not the ones the database was created "
            f"under (fingerprint {stored.hex()[:16]}): every worker of one relay needs the same key set; give "
            "each the same --keys FILE (or IMSG_RELAY_KEYS); `imsg-relay keys show-fingerprint --keys FILE` "
            "prints a set's fingerprint"
        )
