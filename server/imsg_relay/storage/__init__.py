"""Relay storage: the `Storage` interface and its SQLite (embedded) implementation."""

from imsg_relay.storage.base import (
    Account,
    AccountNotFound,
    BlobInfo,
    BlobNotFound,
    BlobQuotaExceeded,
    Bundle,
    ChannelNotFound,
    DeviceMismatch,
    DeviceRef,
    Envelope,
    KeyCounts,
    OneTimeKey,
    SignedKey,
    Storage,
    StorageConflict,
)

__all__ = [
    "Account",
    "AccountNotFound",
    "BlobInfo",
    "BlobNotFound",
    "BlobQuotaExceeded",
    "Bundle",
    "ChannelNotFound",
    "DeviceMismatch",
    "DeviceRef",
    "Envelope",
    "KeyCounts",
    "OneTimeKey",
    "SignedKey",
    "Storage",
    "StorageConflict",
]
