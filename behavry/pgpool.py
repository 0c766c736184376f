"""PostgreSQL connections that live on the event loop, for the few statements the proxy runs on
every call (the audit append, audit/aio.py).

Why not the ORM on a database thread: each hop to a thread and back cost about 0.1 ms of CPU, and
the ORM's cursor and connection wrappers another few tens of microseconds, twice per tool call
(bench/README.md). An `AsyncConnection` in autocommit mode runs the one statement on the loop.

Each event loop gets its own small pool (`for_running_loop`). Connections are made on demand, up
to DB_THREADS per loop, from the same settings as Django's default connection (so tests reach the
test database), and are closed after BEHAVRY_DB_CONN_MAX_AGE seconds like Django's. A connection
that failed in use, or that the server closed while it sat idle, is dropped, never reused.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import select
import time
import weakref
from datetime import datetime
from typing import Any

import psycopg
from django.db import connections
from psycopg import pq

from behavry.dbthreads import DB_THREADS


class AsyncPgPool:
    def __init__(self, params: dict[str, Any], *, max_size: int, max_age: float):
        self._params = params
        self._max_size = max_size
        self._max_age = max_age
        self._idle: list[tuple[psycopg.AsyncConnection, float]] = []  # (connection, opened at)
        self._opened: dict[psycopg.AsyncConnection, float] = {}
        self._connecting = 0  # connects in flight count towards max_size
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    @property
    def size(self) -> int:
        return len(self._opened)

    async def acquire(self) -> psycopg.AsyncConnection:
        while self._idle:
            conn, opened = self._idle.pop()
            if time.monotonic() - opened < self._max_age and _still_open(conn):
                return conn
            await self._drop(conn)
        if len(self._opened) + self._connecting < self._max_size:
            self._connecting += 1
            try:
                conn = await psycopg.AsyncConnection.connect(**self._params)
            except BaseException:
                self._wake_one()  # a failed connect frees its slot for a waiter
                raise
            finally:
                self._connecting -= 1
            self._opened[conn] = time.monotonic()
            return conn
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        return await self.acquire()

    async def release(self, conn: psycopg.AsyncConnection, *, broken: bool = False) -> None:
        """Back to the pool; `broken` (it failed in use, or the use was cancelled part-way, so its
        state is unknown) closes it instead."""
        opened = self._opened.get(conn)
        if broken or opened is None or conn.info.transaction_status != pq.TransactionStatus.IDLE:
            await self._drop(conn)
        else:
            self._idle.append((conn, opened))
        self._wake_one()

    async def close(self) -> None:
        for conn in list(self._opened):
            await self._drop(conn)
        self._idle.clear()

    def close_now(self) -> None:
        """Close every connection without the loop (its loop may be gone): ends the sessions."""
        for conn in list(self._opened):
            conn.pgconn.finish()
        self._opened.clear()
        self._idle.clear()

    async def _drop(self, conn: psycopg.AsyncConnection) -> None:
        self._opened.pop(conn, None)
        with contextlib.suppress(Exception):  # it is being thrown away either way
            await conn.close()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


def _still_open(conn: psycopg.AsyncConnection) -> bool:
    """No round trip: an idle connection has nothing to read unless the server sent an error and
    closed it (a restart, pg_terminate_backend, an idle timeout). Using such a connection would
    fail the next tool call closed; a readable socket drops it here instead."""
    if conn.closed or conn.pgconn.status != pq.ConnStatus.OK:
        return False
    try:
        readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    except (OSError, ValueError, psycopg.OperationalError):
        return False
    return not readable


class StatementError(RuntimeError):
    """PostgreSQL refused the statement (the message is the server's), or the connection failed."""


async def fetch_row(conn: psycopg.AsyncConnection, sql: bytes, params: list[Any]) -> tuple[bytes | None, ...] | None:
    """Run one statement (`$1`-style placeholders) and return its first row as raw text values.

    Straight on libpq's protocol functions: psycopg's cursor (query conversion, a dumper lookup
    per value, result set-up) measured about twice the CPU of the statement itself here. Values
    go as text, with their types from the statement's casts and columns: str, int, float, aware
    datetime and None only. The caller holds `conn` exclusively (from the pool).
    """
    pgconn = conn.pgconn
    loop = asyncio.get_running_loop()
    values = [_text_value(value) for value in params]
    pgconn.send_query_params(sql, values)
    while pgconn.flush():  # a large event that did not fit the socket buffer in one go
        await _ready(loop, pgconn.socket, write=True)
    pgconn.consume_input()
    while pgconn.is_busy():
        await _ready(loop, pgconn.socket, write=False)
        pgconn.consume_input()
    first: tuple[bytes | None, ...] | None = None
    error = ""
    while (result := pgconn.get_result()) is not None:
        if result.status == pq.ExecStatus.TUPLES_OK:
            if result.ntuples and first is None:
                first = tuple(result.get_value(0, col) for col in range(result.nfields))
        elif result.status != pq.ExecStatus.COMMAND_OK:
            error = (result.error_message or b"").decode("utf-8", "replace").strip() or str(result.status)
    if error or pgconn.status != pq.ConnStatus.OK:
        raise StatementError(error or pgconn.get_error_message().strip() or "connection lost")
    return first


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


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, *, write: bool) -> None:
    ready = loop.create_future()
    add, remove = (loop.add_writer, loop.remove_writer) if write else (loop.add_reader, loop.remove_reader)
    add(fd, _set_once, ready)
    try:
        await ready
    finally:
        remove(fd)


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
