"""The connection pool of the PostgreSQL storage: a fixed number of connections, each
operation one transaction on one of them (`tx`), committed on success and rolled back on
any error. PostgreSQL commits concurrent transactions together on its own (group commit in
its WAL writer), so nothing here batches.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg import sql

from imsg_relay.errors import StorageUnavailable
from imsg_relay.storage.postgres import schema


class Database:
    def __init__(self, conninfo: str, pool_size: int, search_path: str | None) -> None:
        self.conninfo = conninfo
        self.pool_size = pool_size
        self.search_path = search_path
        self._pool: asyncio.Queue[psycopg.AsyncConnection[Any]] | None = None
        self._all: list[psycopg.AsyncConnection[Any]] = []
        self.waiting = 0  # transactions waiting for a free connection

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=False)
        if self.search_path:
            await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.search_path)))
            await conn.commit()
        return conn

    async def open(self) -> None:
        try:
            setup = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
        except psycopg.OperationalError as exc:
            raise StorageUnavailable(f"cannot reach postgresql: {exc}") from exc
        async with setup:
            if self.search_path:
                name = sql.Identifier(self.search_path)
                await setup.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(name))
                await setup.execute(sql.SQL("SET search_path TO {}").format(name))
            await schema.create(setup)
        self._pool = asyncio.Queue()
        for _ in range(self.pool_size):
            conn = await self._connect()
            self._all.append(conn)
            self._pool.put_nowait(conn)

    async def close(self) -> None:
        for conn in self._all:
            await conn.close()
        self._all.clear()
        self._pool = None

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection (a broken one replaced first), back in the pool afterwards;
        a database lost on the way is StorageUnavailable."""
        if self._pool is None:
            raise StorageUnavailable("storage is closed")
        pool = self._pool
        self.waiting += 1
        try:
            conn = await pool.get()
        finally:
            self.waiting -= 1
        try:
            if conn.closed or conn.broken:
                self._all.remove(conn)
                conn = await self._connect()
                self._all.append(conn)
            yield conn
        except psycopg.OperationalError as exc:
            raise StorageUnavailable(str(exc)) from exc
        finally:
            pool.put_nowait(conn)

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection inside one transaction, committed on success."""
        async with self._connection() as conn:
            try:
                yield conn
                await conn.commit()
            except BaseException:
                if not conn.closed:
                    await conn.rollback()
                raise

    @asynccontextmanager
    async def try_lock(self, lock_class: int) -> AsyncIterator[bool]:
        """A session advisory lock of `lock_class` for this schema, tried once, held on one
        pooled connection until the block ends: True when this worker got it."""
        if self._pool is None:
            raise StorageUnavailable("storage is closed")
        pool = self._pool
        conn = await pool.get()
        got = False
        try:
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(current_schema()))", (lock_class,))
            row = await cur.fetchone()
            await conn.commit()
            got = bool(row and row[0])
            yield got
        except psycopg.OperationalError as exc:
            raise StorageUnavailable(str(exc)) from exc
        finally:
            if got and not conn.closed:
                await conn.execute("SELECT pg_advisory_unlock(%s, hashtext(current_schema()))", (lock_class,))
                await conn.commit()
            pool.put_nowait(conn)

    async def one(self, query: str, params: Sequence[Any] | Mapping[str, Any]) -> Any:
        """The first row of one statement, which is its own transaction (None when there is
        none). Run in autocommit: one round trip instead of three (BEGIN, the statement,
        COMMIT), which is most of the cost of an authenticated request's token lookup;
        a single statement is atomic and, when it writes, durable at its end either way."""
        async with self._connection() as conn:
            await conn.set_autocommit(True)
            try:
                cur = await conn.execute(query, params)
                return await cur.fetchone()
            finally:
                if not conn.closed:
                    await conn.set_autocommit(False)


async def one_row(cur: psycopg.AsyncCursor[Any]) -> tuple[Any, ...]:
    """The row of a query that always returns one (an aggregate: count, sum)."""
    row = await cur.fetchone()
    if row is None:
        raise RuntimeError("an aggregate query returned no row")
    return tuple(row)
