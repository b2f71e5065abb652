"""Retention: envelopes older than the retention period, provisioning channels past
their expiry (with their messages), and attachment blobs past the blob retention (rows and
files, complete or not), are deleted in batches.

Batches of at most SWEEP_BATCH rows keep each write transaction short, so sends queued
behind the sweeper in the writer wait for one small batch, not for the whole purge. Reads
also filter expired rows, so nothing is served past retention even between sweeps.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from imsg_relay.blobs.base import BlobStore
from imsg_relay.storage.base import Storage

log = logging.getLogger("imsg_relay.sweeper")

SWEEP_BATCH = 1000


class SweepMetrics(Protocol):
    def sweep_done(self, envelopes: int, channels: int, blobs: int) -> None: ...
    def sweep_failed(self) -> None: ...
    def sweep_skipped(self) -> None: ...


async def sweep(storage: Storage, cutoff_ms: int, batch: int = SWEEP_BATCH) -> int:
    """Delete every envelope received before `cutoff_ms`; returns how many."""
    total = 0
    while True:
        n = await storage.delete_expired(cutoff_ms, batch)
        total += n
        if n < batch:
            return total
        await asyncio.sleep(0)  # let queued requests in between batches


async def sweep_channels(storage: Storage, now_ms: int, batch: int = SWEEP_BATCH) -> int:
    """Delete every provisioning channel expired at `now_ms`, and its messages; returns how
    many channels."""
    total = 0
    while True:
        n = await storage.delete_expired_channels(now_ms, batch)
        total += n
        if n < batch:
            return total
        await asyncio.sleep(0)


async def sweep_blobs(storage: Storage, blobs: BlobStore, live_after_ms: int, batch: int = SWEEP_BATCH) -> int:
    """Delete every blob created at or before `live_after_ms`: each batch's files first,
    then its rows, so a crash in between leaves rows the next sweep finds again (already
    unreadable: reads check expiry), never a file without a row. Returns how many."""
    total = 0
    while True:
        ids = await storage.expired_blobs(live_after_ms, batch)
        for blob_id in ids:
            await blobs.delete(blob_id)
        total += await storage.delete_blobs(ids)
        if len(ids) < batch:
            return total
        await asyncio.sleep(0)


async def sweep_once(
    storage: Storage,
    now_ms: int,
    retention_ms: int,
    blobs: BlobStore | None = None,
    blob_retention_ms: int | None = None,
) -> tuple[int, int, int] | None:
    """One sweep: (envelopes, channels, blobs) deleted, or None when another worker of the
    same database is sweeping now (`Storage.sweep_turn`): workers take turns, so no row is
    swept twice, and the one sweeping goes on until nothing expired is left."""
    async with storage.sweep_turn() as mine:
        if not mine:
            return None
        deleted = await sweep(storage, now_ms - retention_ms)
        if deleted:
            log.info("retention sweep deleted %d envelopes", deleted)
        channels = await sweep_channels(storage, now_ms)
        if channels:
            log.info("retention sweep deleted %d expired provisioning channels", channels)
        gone = 0
        if blobs is not None and blob_retention_ms is not None:
            gone = await sweep_blobs(storage, blobs, now_ms - blob_retention_ms)
            if gone:
                log.info("retention sweep deleted %d expired blobs", gone)
        return deleted, channels, gone


async def run_sweeper(
    storage: Storage,
    retention_ms: int,
    interval: float,
    clock: Callable[[], float],
    blobs: BlobStore | None = None,
    blob_retention_ms: int | None = None,
    metrics: SweepMetrics | None = None,
) -> None:
    """Sweep now and then every `interval` seconds until cancelled."""
    while True:
        try:
            done = await sweep_once(storage, int(clock() * 1000), retention_ms, blobs, blob_retention_ms)
            if metrics is not None:
                if done is None:
                    metrics.sweep_skipped()
                else:
                    metrics.sweep_done(*done)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failed sweep is retried next interval, never fatal
            log.warning("retention sweep failed: %s", type(exc).__name__)
            if metrics is not None:
                metrics.sweep_failed()
        await asyncio.sleep(interval)
