"""ML-KEM-768 (FIPS 203). Keys are generated from a 64-byte seed (d || z) so that the
protocol layer can take its randomness as a parameter.

Decapsulating an invalid ciphertext of the right length does not raise: ML-KEM's implicit
rejection returns a pseudorandom key, and the session then fails at the first AEAD check
(no decryption oracle, the Telegram KEX lesson). Only a wrong length raises here.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey, MLKEM768PublicKey

from imsg.crypto.errors import InvalidKeyError

SEED_LEN = 64
PUBLIC_KEY_LEN = 1184
CIPHERTEXT_LEN = 1088
SHARED_SECRET_LEN = 32


class KemKeyPair:
    __slots__ = ("seed", "public", "_key")

    def __init__(self, seed: bytes):
        if len(seed) != SEED_LEN:
            raise InvalidKeyError("ml-kem-768 seed must be 64 bytes")
        self._key = MLKEM768PrivateKey.from_seed_bytes(seed)
        self.seed = seed
        self.public = self._key.public_key().public_bytes_raw()

    def decapsulate(self, ciphertext: bytes) -> bytes:
        if len(ciphertext) != CIPHERTEXT_LEN:
            raise InvalidKeyError("ml-kem-768 ciphertext must be 1088 bytes")
        return self._key.decapsulate(ciphertext)


def is_valid_public_key(public: bytes) -> bool:
    """FIPS 203's encapsulation key check (length, and every coefficient below q), so a
    malformed key is refused when it arrives, not when we next send."""
    if len(public) != PUBLIC_KEY_LEN:
        return False
    try:
        MLKEM768PublicKey.from_public_bytes(public)
    except ValueError:
        return False
    return True


def encapsulate(public: bytes) -> tuple[bytes, bytes]:
    """Return (shared_secret, ciphertext) for `public`; raises on a malformed key."""
    if len(public) != PUBLIC_KEY_LEN:
        raise InvalidKeyError("ml-kem-768 public key must be 1184 bytes")
    try:
        key = MLKEM768PublicKey.from_public_bytes(public)
    except ValueError:
        raise InvalidKeyError("ml-kem-768 public key is malformed") from None
    return key.encapsulate()
