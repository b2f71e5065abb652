"""The group-commit writer of the SQLite storage, and its WAL checkpointer.

A single writer thread owns the only writing connection. Every state change is a small
function queued to it; the thread takes everything queued, runs it all in one transaction,
COMMITs once (one fsync for the whole group), and only then resolves the callers' futures.
An fsync costs ~0.35 ms here, so committing each send alone caps out near 2,900/s;
grouped, the cost is shared by every request that arrived meanwhile. Nothing is
acknowledged before its COMMIT returns, so kill -9 loses nothing acknowledged.

WAL checkpoints run in a thread of their own (PASSIVE, once a second) instead of inside
some unlucky writer's COMMIT, where they stalled the whole group behind a database fsync.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imsg_relay.errors import StorageUnavailable
from imsg_relay.storage.base import (
    AccountNotFound,
    BlobNotFound,
    BlobQuotaExceeded,
    ChannelNotFound,
    DeviceMismatch,
    StorageConflict,
)

log = logging.getLogger("imsg_relay.storage")

CHECKPOINT_INTERVAL = 1.0  # seconds between PASSIVE checkpoints of the WAL
MAX_GROUP = 512  # operations in one transaction; bounds how long one commit holds results


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA synchronous = FULL")  # NORMAL in WAL may lose commits on power loss
    conn.execute("PRAGMA foreign_keys = OFF")
    return conn


class Op:
    __slots__ = ("fn", "future", "loop")

    def __init__(
        self, fn: Callable[[sqlite3.Connection], Any], future: asyncio.Future[Any], loop: asyncio.AbstractEventLoop
    ) -> None:
        self.fn = fn
        self.future = future
        self.loop = loop


def _resolve(results: list[tuple[Op, bool, Any]]) -> None:
    for op, ok, value in results:
        if op.future.done():  # the caller went away (cancelled); nothing to tell it
            continue
        if ok:
            op.future.set_result(value)
        else:
            op.future.set_exception(value)


class Writer(threading.Thread):
    def __init__(self, path: Path) -> None:
        super().__init__(name="imsg-relay-sqlite-writer", daemon=True)
        self._path = path
        self._queue: queue.SimpleQueue[Op | None] = queue.SimpleQueue()
        self.ready = threading.Event()
        self.failed: BaseException | None = None
        self.groups = 0
        self.ops = 0

    def submit(self, op: Op) -> None:
        self._queue.put(op)

    def stop(self) -> None:
        self._queue.put(None)

    @property
    def queued(self) -> int:
        """Operations submitted and not yet picked up (approximate, for metrics)."""
        return self._queue.qsize()

    def run(self) -> None:
        try:
            conn = connect(self._path)
            conn.execute("PRAGMA wal_autocheckpoint = 0")  # the checkpointer thread does it
        except BaseException as exc:  # reported to open(), which raises it
            self.failed = exc
            self.ready.set()
            return
        self.ready.set()
        stopping = False
        try:
            while not stopping:
                first = self._queue.get()
                if first is None:
                    break
                batch = [first]
                while len(batch) < MAX_GROUP:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stopping = True
                        break
                    batch.append(item)
                self._run_group(conn, batch)
        finally:
            conn.close()

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # no transaction was open

    def _run_group(self, conn: sqlite3.Connection, batch: list[Op]) -> None:
        # Every operation raises its refusals (conflict, mismatch, not found) before it
        # writes anything, so a refused operation leaves nothing to undo and needs no
        # savepoint of its own. A database error mid-group rolls the whole group back and
        # fails all of it as unavailable (503, retryable): nothing in it was acknowledged.
        results: list[tuple[Op, bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in batch:
                try:
                    results.append((op, True, op.fn(conn)))
                except (
                    StorageConflict,
                    AccountNotFound,
                    DeviceMismatch,
                    ChannelNotFound,
                    BlobNotFound,
                    BlobQuotaExceeded,
                ) as exc:
                    results.append((op, False, exc))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            log.error("storage transaction failed: %s", type(exc).__name__)
            self._rollback(conn)
            results = [(op, False, StorageUnavailable(type(exc).__name__)) for op in batch]
        except Exception as exc:  # a bug in one operation must not kill the writer thread
            # Nothing after this thread would ever answer again: every caller would wait
            # forever. Roll the group back (the buggy operation may have written half),
            # give that operation its own error and the others a retryable 503.
            log.error("storage operation failed: %s", type(exc).__name__)
            self._rollback(conn)
            failed = batch[len(results)] if len(results) < len(batch) else None
            results = [(op, False, exc if op is failed else StorageUnavailable("group rolled back")) for op in batch]
        self.groups += 1
        self.ops += len(batch)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Op, bool, Any]]] = {}
        for item in results:
            by_loop.setdefault(item[0].loop, []).append(item)
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, items)
            except RuntimeError:  # that loop is closed; its callers are gone
                pass


class Checkpointer(threading.Thread):
    """PASSIVE checkpoints of the WAL every CHECKPOINT_INTERVAL seconds until stopped."""

    def __init__(self, path: Path) -> None:
        super().__init__(name="imsg-relay-sqlite-checkpoint", daemon=True)
        self._path = path
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        conn = connect(self._path)
        try:
            while not self._stop_event.wait(CHECKPOINT_INTERVAL):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # retried next interval
                    log.warning("wal checkpoint failed: %s", type(exc).__name__)
        finally:
            conn.close()
