"""PostgreSQL connections that live on the event loop, for the few statements the proxy runs on
every call (the audit append, audit/aio.py).

Why not the ORM on a database thread: each hop to a thread and back cost about 0.1 ms of CPU, and
the ORM's cursor and connection wrappers more, twice per tool call; in process a call went from
1.6 to 1.0-1.1 ms of CPU (bench/README.md).

Each event loop gets its own small pool (`for_running_loop`). Connections are made on demand, up
to DB_THREADS per loop, from the same settings as Django's default connection (so tests reach the
test database), and are closed after BEHAVRY_DB_CONN_MAX_AGE seconds like Django's. A connection
that failed in use, or that the server wrote to while it sat idle (a restart, pg_terminate_backend,
an idle timeout), is dropped, never reused: using it would fail the next tool call closed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import weakref
from datetime import datetime
from typing import Any

import psycopg
from django.db import connections
from psycopg import pq

from behavry.dbthreads import DB_THREADS


class StatementError(RuntimeError):
    """PostgreSQL refused the statement (the message is the server's), or the connection failed."""


class PooledConnection:
    """One autocommit connection, with its socket watched by the loop for its whole life: one
    add_reader per connection instead of an add/remove pair (two epoll_ctl calls) per statement,
    and anything the server sends while the connection is idle marks it stale at once."""

    def __init__(self, conn: psycopg.AsyncConnection, loop: asyncio.AbstractEventLoop):
        self.conn = conn
        self.opened = time.monotonic()
        self.stale = False
        self._loop = loop
        self._fd = conn.pgconn.socket
        self._waiter: asyncio.Future | None = None
        self._busy = False
        loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        if self._busy:
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)
        else:
            # Idle, yet the server wrote: an error before closing, most likely. Stop watching
            # (the socket stays readable, so the callback would spin) and drop it on next use.
            self.stale = True
            self._unwatch()

    def _unwatch(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(Exception):  # a closed loop has nothing to remove
                self._loop.remove_reader(self._fd)
            self._fd = -1

    def usable(self, max_age: float) -> bool:
        pgconn = self.conn.pgconn
        return (
            not self.stale
            and time.monotonic() - self.opened < max_age
            and pgconn.status == pq.ConnStatus.OK
            and pgconn.transaction_status == pq.TransactionStatus.IDLE
        )

    async def fetch_row(self, sql: bytes, params: list[Any]) -> tuple[bytes | None, ...] | None:
        """Run one statement (`$1`-style placeholders) and return its first row as raw text values.

        Straight on libpq's protocol functions: psycopg's cursor (query conversion, a dumper
        lookup per value, result set-up) measured about twice the CPU of the statement itself
        here. Values go as text, their types given by the statement's casts and columns: str, int,
        float, aware datetime and None only.
        """
        pgconn = self.conn.pgconn
        values = [_text_value(value) for value in params]
        self._busy = True
        try:
            pgconn.send_query_params(sql, values)
            while pgconn.flush():  # an event too large for the socket buffer in one go
                await _writable(self._loop, pgconn.socket)
            pgconn.consume_input()
            while pgconn.is_busy():
                self._waiter = self._loop.create_future()
                await self._waiter
                pgconn.consume_input()
            first: tuple[bytes | None, ...] | None = None
            error = ""
            while (result := pgconn.get_result()) is not None:
                if result.status == pq.ExecStatus.TUPLES_OK:
                    if result.ntuples and first is None:
                        first = tuple(result.get_value(0, col) for col in range(result.nfields))
                elif result.status != pq.ExecStatus.COMMAND_OK:
                    error = (result.error_message or b"").decode("utf-8", "replace").strip() or str(result.status)
        finally:
            self._busy = False
            self._waiter = None
        if error or pgconn.status != pq.ConnStatus.OK:
            raise StatementError(error or pgconn.get_error_message().strip() or "connection lost")
        return first

    async def close(self) -> None:
        self._unwatch()
        with contextlib.suppress(Exception):  # it is being thrown away either way
            await self.conn.close()

    def close_now(self) -> None:
        self._unwatch()
        self.conn.pgconn.finish()


class AsyncPgPool:
    def __init__(self, params: dict[str, Any], *, max_size: int, max_age: float):
        self._params = params
        self._max_size = max_size
        self._max_age = max_age
        self._idle: list[PooledConnection] = []
        self._opened: set[PooledConnection] = set()
        self._connecting = 0  # connects in flight count towards max_size
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    @property
    def size(self) -> int:
        return len(self._opened)

    async def acquire(self) -> PooledConnection:
        while self._idle:
            pooled = self._idle.pop()
            if pooled.usable(self._max_age):
                return pooled
            await self._drop(pooled)
        if len(self._opened) + self._connecting < self._max_size:
            self._connecting += 1
            try:
                conn = await psycopg.AsyncConnection.connect(**self._params)
            except BaseException:
                self._wake_one()  # a failed connect frees its slot for a waiter
                raise
            finally:
                self._connecting -= 1
            pooled = PooledConnection(conn, asyncio.get_running_loop())
            self._opened.add(pooled)
            return pooled
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        return await self.acquire()

    async def release(self, pooled: PooledConnection, *, broken: bool = False) -> None:
        """Back to the pool; `broken` (it failed in use, or the use was cancelled part-way, so its
        state is unknown) closes it instead."""
        if broken or pooled not in self._opened:
            await self._drop(pooled)
        else:
            self._idle.append(pooled)
        self._wake_one()

    async def close(self) -> None:
        for pooled in list(self._opened):
            await self._drop(pooled)
        self._idle.clear()

    def close_now(self) -> None:
        """Close every connection without awaiting (its loop may be stopped): ends the sessions."""
        for pooled in self._opened:
            pooled.close_now()
        self._opened.clear()
        self._idle.clear()

    async def _drop(self, pooled: PooledConnection) -> None:
        self._opened.discard(pooled)
        await pooled.close()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


def _text_value(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise TypeError("naive datetime")  # would be read in the session's time zone
        return value.isoformat().encode()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value).encode()
    raise TypeError(f"cannot send a {type(value).__name__} as statement text")


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    ready = loop.create_future()
    loop.add_writer(fd, _set_once, ready)
    try:
        await ready
    finally:
        loop.remove_writer(fd)


def _set_once(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncPgPool] = weakref.WeakKeyDictionary()


def for_running_loop() -> AsyncPgPool:
    """The running loop's pool, made on first use from Django's default database settings."""
    loop = asyncio.get_running_loop()
    pool = _pools.get(loop)
    if pool is None:
        max_age = connections["default"].settings_dict["CONN_MAX_AGE"]
        pool = _pools[loop] = AsyncPgPool(
            connection_params(), max_size=DB_THREADS, max_age=float("inf") if max_age is None else max_age
        )
    return pool


def connection_params() -> dict[str, Any]:
    """Django's parameters for the default database, as an autocommit AsyncConnection takes them.

    Django's own cursor class and adapter context are sync-only and only shape what the ORM reads
    back; the statements run here read ids and hashes. Prepared statements stay off as in
    Django's settings (a pooler in transaction mode would send the EXECUTE to another backend).
    """
    params = connections["default"].get_connection_params()
    for sync_only in ("cursor_factory", "context"):
        params.pop(sync_only, None)
    params["autocommit"] = True
    return params


def close_all() -> None:
    """Close every loop's connections (tests, before the test database is dropped)."""
    for pool in list(_pools.values()):
        pool.close_now()
    _pools.clear()
