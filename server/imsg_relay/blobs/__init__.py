"""Attachment blob stores: opaque ciphertext files behind a small interface."""

from imsg_relay.blobs.base import BlobMissing, BlobReader, BlobStore, BlobWriter

__all__ = ["BlobMissing", "BlobReader", "BlobStore", "BlobWriter"]
