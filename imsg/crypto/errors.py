"""Errors raised by the primitives. Messages are lowercase and say what failed."""


class CryptoError(Exception):
    """a cryptographic operation failed"""


class AuthenticationError(CryptoError):
    """failed to decrypt and authenticate: the data may be corrupted or tampered with"""


class InvalidKeyError(CryptoError):
    """a key has the wrong length or is not a valid point"""


class BadSignatureError(CryptoError):
    """signature verification failed"""


class ZeroSharedSecretError(CryptoError):
    """x25519 produced an all-zero shared secret (low-order or identity public key)"""
