"""`storage-key`: a home's storage key wrapped under its passcode (docs/STORAGE.md).

AES-256-GCM under a key derived from the passcode with Argon2id (RFC 9106); the Argon2id
parameters and salt are in the clear and authenticated as associated data, with the
database file's SQLCipher salt beside them. imsg.store.vault opens and re-keys homes with it.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypedDict

from imsg import errors
from imsg.crypto.labels import LABEL_KEY_CHECK

KEY_FILE = "storage-key"
KEY_FORMAT = "imsg-storage-key/v1"

# Argon2id: RFC 9106 §4 suggests t=3, p=4 with 64 MiB where memory is short; a desktop
# can afford four times that. ~0.3 s on the 2-core machine this was measured on
# (scripts/bench_vault). The parameters travel in `storage-key`, so raising them later
# only needs a `passcode change`.
ARGON2_MEMORY_KIB = 256 * 1024
ARGON2_ITERATIONS = 3
ARGON2_LANES = 4
# What we accept when reading a key file: enough to refuse a file crafted to make us
# allocate all memory or spin for hours, with room for stronger settings later.
_ARGON2_MAX_MEMORY_KIB = 4 * 1024 * 1024
_ARGON2_MAX_ITERATIONS = 64


class WrongPasscodeError(errors.LocalStateError):
    """wrong passcode"""

    code = "wrong_passcode"
    hint = "nothing was changed; the wait grows with each wrong try"


def _b64e(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _b64d(s: object, length: int) -> bytes:
    if not isinstance(s, str):
        raise errors.LocalStateError(f"{KEY_FILE} is damaged")
    try:
        raw = base64.b64decode(s, validate=True)
    except (ValueError, TypeError):
        raise errors.LocalStateError(f"{KEY_FILE} is damaged") from None
    if len(raw) != length:
        raise errors.LocalStateError(f"{KEY_FILE} is damaged")
    return raw


class Argon2Params(TypedDict, total=False):
    """Argon2id costs other than the defaults above (tests pass small ones; they are stored
    in the key file, so a home opens with whatever it was set with)."""

    memory_kib: int
    iterations: int
    lanes: int


@dataclass(frozen=True)
class KeyFile:
    """`storage-key`: the storage key wrapped under the passcode (see the module doc)."""

    salt: bytes  # Argon2id salt, 16 random bytes
    nonce: bytes  # AES-GCM nonce, 12 random bytes
    wrapped: bytes  # AES-256-GCM(kek, storage key, aad) = 32 + 16 bytes
    check: bytes  # HMAC-SHA256(storage key, LABEL_KEY_CHECK)[:16]: tells a stale agent/keyring key
    db_salt: bytes  # the database file's first 16 bytes (SQLCipher's salt)
    memory_kib: int = ARGON2_MEMORY_KIB
    iterations: int = ARGON2_ITERATIONS
    lanes: int = ARGON2_LANES
    keyring: bool = False  # the user opted in to keeping the storage key in the OS keyring

    def aad(self) -> bytes:
        # Everything but the ciphertext is bound to it: a file with lowered Argon2id cost or
        # a swapped salt fails to unwrap instead of quietly weakening.
        return json.dumps(
            {
                "format": KEY_FORMAT,
                "kdf": "argon2id",
                "m": self.memory_kib,
                "t": self.iterations,
                "p": self.lanes,
                "salt": _b64e(self.salt),
            },
            sort_keys=True,
        ).encode()

    def dumps(self) -> bytes:
        return (
            json.dumps(
                {
                    "format": KEY_FORMAT,
                    "kdf": "argon2id",
                    "m": self.memory_kib,
                    "t": self.iterations,
                    "p": self.lanes,
                    "salt": _b64e(self.salt),
                    "nonce": _b64e(self.nonce),
                    "wrapped": _b64e(self.wrapped),
                    "check": _b64e(self.check),
                    "db_salt": _b64e(self.db_salt),
                    "keyring": self.keyring,
                },
                indent=1,
            ).encode()
            + b"\n"
        )

    @classmethod
    def loads(cls, data: bytes) -> KeyFile:
        try:
            doc = json.loads(data)
            ok = isinstance(doc, dict) and doc.get("format") == KEY_FORMAT and doc.get("kdf") == "argon2id"
            m, t, p = doc["m"], doc["t"], doc["p"]
        except (ValueError, KeyError, TypeError):
            ok = False
        if (
            not ok
            or not all(type(v) is int for v in (m, t, p))
            or not (8 * p <= m <= _ARGON2_MAX_MEMORY_KIB and 1 <= t <= _ARGON2_MAX_ITERATIONS and 1 <= p <= 64)
        ):
            raise errors.LocalStateError(f"{KEY_FILE} is damaged or from a newer imsg")
        return cls(
            _b64d(doc["salt"], 16),
            _b64d(doc["nonce"], 12),
            _b64d(doc["wrapped"], 48),
            _b64d(doc["check"], 16),
            _b64d(doc["db_salt"], 16),
            m,
            t,
            p,
            doc.get("keyring") is True,
        )


def _normalise(passcode: str) -> bytes:
    # NFC: the same passcode typed on two keyboards (composed or decomposed accents) is one key.
    return unicodedata.normalize("NFC", passcode).encode("utf-8")


def derive_kek(passcode: str, kf: KeyFile) -> bytes:
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

    return Argon2id(
        salt=kf.salt, length=32, iterations=kf.iterations, lanes=kf.lanes, memory_cost=kf.memory_kib
    ).derive(_normalise(passcode))


def key_check(storage_key: bytes) -> bytes:
    return hmac.new(storage_key, LABEL_KEY_CHECK, "sha256").digest()[:16]


def wrap(
    storage_key: bytes,
    passcode: str,
    db_salt: bytes,
    *,
    rng: Callable[[int], bytes] = os.urandom,
    keyring: bool = False,
    memory_kib: int = ARGON2_MEMORY_KIB,
    iterations: int = ARGON2_ITERATIONS,
    lanes: int = ARGON2_LANES,
) -> KeyFile:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    kf = KeyFile(rng(16), rng(12), b"", key_check(storage_key), db_salt, memory_kib, iterations, lanes, keyring)
    wrapped = AESGCM(derive_kek(passcode, kf)).encrypt(kf.nonce, storage_key, kf.aad())
    return replace(kf, wrapped=wrapped)


def unwrap(kf: KeyFile, passcode: str) -> bytes:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        key = AESGCM(derive_kek(passcode, kf)).decrypt(kf.nonce, kf.wrapped, kf.aad())
    except InvalidTag:
        raise WrongPasscodeError() from None
    if not hmac.compare_digest(key_check(key), kf.check):
        raise errors.LocalStateError(f"{KEY_FILE} is damaged")
    return key
