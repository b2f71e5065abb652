"""The relay's backends, chosen by the settings: storage (SQLite, or PostgreSQL with
`database_url`), push (in-process, or Redis with `redis_url`) and blobs (files in the data
directory, or an S3-compatible bucket with `blobs_url`).

The scale-out backends need a client library that an embedded install does not carry; each
is imported only when configured, and a missing one is a `MissingExtra` that names the
extra to install, never a bare ModuleNotFoundError traceback.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from urllib.parse import unquote, urlsplit

from imsg_relay.blobs.base import BlobStore
from imsg_relay.push import InProcessPush, Push
from imsg_relay.settings import Settings, SettingsError
from imsg_relay.storage.base import Storage


class MissingExtra(SettingsError):
    """a configured backend's client library is not installed"""


# backend -> (the module that needs the library, the library's import name, the extra)
_EXTRAS = {
    "postgres": ("imsg_relay.storage.postgres", "psycopg", "postgres"),
    "redis": ("imsg_relay.push.redis", "redis", "redis"),
    "s3": ("imsg_relay.blobs.s3", "boto3", "s3"),
}


def load_backend(kind: str, what: str) -> ModuleType:
    """Import the module of backend `kind`, or raise MissingExtra saying what to install."""
    module, library, extra = _EXTRAS[kind]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if (exc.name or "").split(".")[0] != library:
            raise
        raise MissingExtra(
            f"{what} needs the {library!r} package, which is not installed: pip install 'imsg-relay[{extra}]'"
        ) from None


def build_storage(settings: Settings) -> Storage:
    if settings.database_url:
        storage: Storage = load_backend("postgres", "--database postgresql://...").PostgresStorage(
            settings.database_url, pool_size=settings.database_pool
        )
        return storage
    from imsg_relay.storage.sqlite import SQLiteStorage

    return SQLiteStorage(settings.data_dir)


def build_push(settings: Settings) -> Push:
    if settings.redis_url:
        push: Push = load_backend("redis", "--push redis://...").RedisPush(settings.redis_url)
        return push
    return InProcessPush()


def build_blobs(settings: Settings) -> BlobStore:
    url = settings.blobs_url
    if url and url.startswith("s3://"):
        store: BlobStore = load_backend("s3", "--blobs s3://...").S3BlobStore.from_url(url)
        return store
    from imsg_relay.blobs.filesystem import FilesystemBlobStore

    return FilesystemBlobStore(blob_dir(settings))


def blob_dir(settings: Settings) -> Path:
    """Where the filesystem blob store keeps its files: `blobs_url` as a path or file: URL,
    else `blobs/` in the data directory."""
    url = settings.blobs_url
    if not url:
        return settings.data_dir / "blobs"
    if url.startswith("file:"):
        return Path(unquote(urlsplit(url).path))
    return Path(url)
