"""Primitives over pyca `cryptography`. This package imports nothing else of ours.

Each module wraps one family (kdf, aead, dh, sign, kem) and turns library exceptions
into the few errors in `errors`, so callers above never see backend details.
"""
