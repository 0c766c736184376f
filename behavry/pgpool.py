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
import select
import time
import weakref
from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg
from django.conf import settings
from django.db import connections
from psycopg import pq, sql

from behavry.dbthreads import DB_THREADS


class StatementError(RuntimeError):
    """PostgreSQL refused the statement (the message is the server's), or the connection failed."""

    def __init__(self, message: str, sqlstate: str = ""):
        super().__init__(message)
        self.sqlstate = sqlstate  # the server's error code; empty when the connection failed


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
        self._prepared: set[bytes] = set()  # statement names prepared on this connection
        loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        if self._busy:
            # Wake the statement's task (waiting for its answer, or for room to send the rest of a
            # large statement); it reads the input itself. Reading here could close the socket
            # (end of file) while the loop still watches its number.
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)
        elif _has_input(self._fd):
            # Idle, yet the server wrote: an error before closing, most likely. Stop watching
            # (the socket stays readable, so the callback would spin) and drop it on next use.
            # asyncio's selector loop also calls this once after a statement whose answer was read
            # in the meantime (it collected the event first): then nothing is there.
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

    async def fetch_row(
        self, sql: bytes, params: list[Any], *, name: bytes = b"", on_wire: asyncio.Future | None = None
    ) -> tuple[bytes | None, ...] | None:
        """Run one statement (`$1`-style placeholders) and return its first row as raw text values.

        Straight on libpq's protocol functions: psycopg's cursor (query conversion, a dumper
        lookup per value, result set-up) measured about twice the CPU of the statement itself
        here. Values go as text, their types given by the statement's casts and columns: str, int,
        float, aware datetime and None only.

        With a `name`, the statement is prepared once on this connection under that name and then
        only executed: PostgreSQL then skips parsing, and after five runs planning (its default
        plan_cache_mode picks the generic plan, the same index lookups for any values): about
        0.2-0.4 ms less per audit append on this machine (bench/README.md). A name stands for one
        SQL text for the connection's life; the text is not sent again. A connection whose
        exchange failed part-way must be dropped (the pool's callers do), as what the server holds
        is then unknown. `on_wire`, if given, is resolved once the whole statement has been handed
        to the socket; if the call fails before that, resolving it is the caller's (audit/aio.py).
        """
        # Plain strings, most of an audit event's values, inline: two calls fewer for each.
        values = [
            value.encode() if value.__class__ is str and "\x00" not in value else _text_value(value) for value in params
        ]
        pgconn = self.conn.pgconn
        if name and name not in self._prepared:
            await self._exchange(pgconn.send_prepare, name, sql)
            self._prepared.add(name)
        if name:
            return await self._exchange(pgconn.send_query_prepared, name, values, on_wire=on_wire)
        return await self._exchange(pgconn.send_query_params, sql, values, on_wire=on_wire)

    async def _exchange(
        self, send: Callable[..., None], *args: Any, on_wire: asyncio.Future | None = None
    ) -> tuple[bytes | None, ...] | None:
        """Send one command and read its results: the first row of the first result with rows."""
        pgconn = self.conn.pgconn
        self._busy = True
        try:
            send(*args)
            while pgconn.flush():  # an event too large for the socket buffer in one go
                await self._writable_or_readable()
                pgconn.consume_input()  # the server may answer (or hang up) before all is sent
            if on_wire is not None:
                _set_once(on_wire)
            first: tuple[bytes | None, ...] | None = None
            error = sqlstate = ""
            while True:
                # get_result() blocks the whole loop while libpq lacks the rest of a message: wait
                # for is_busy() to clear before each call, as psycopg does. Right after sending,
                # is_busy() is true without reading: the answer cannot be there yet, and a read
                # would be a recv() that only says so (the socket stays readable if it is there).
                while pgconn.is_busy():
                    self._waiter = self._loop.create_future()
                    await self._waiter
                    self._waiter = None
                    pgconn.consume_input()
                result = pgconn.get_result()
                if result is None:
                    break
                if result.status == pq.ExecStatus.TUPLES_OK:
                    if result.ntuples and first is None:
                        first = tuple(result.get_value(0, col) for col in range(result.nfields))
                elif result.status != pq.ExecStatus.COMMAND_OK:
                    error = (result.error_message or b"").decode("utf-8", "replace").strip() or str(result.status)
                    sqlstate = (result.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode()
        finally:
            self._busy = False
            self._waiter = None
            if pgconn.status != pq.ConnStatus.OK:
                # libpq has closed the socket: stop watching its number before anything can reuse it.
                self._unwatch()
        if error or pgconn.status != pq.ConnStatus.OK:
            raise StatementError(error or pgconn.get_error_message().strip() or "connection lost", sqlstate)
        return first

    async def _writable_or_readable(self) -> None:
        self._waiter = self._loop.create_future()
        self._loop.add_writer(self._fd, _set_once, self._waiter)
        try:
            await self._waiter
        finally:
            self._loop.remove_writer(self._fd)
            self._waiter = None

    async def close(self) -> None:
        self._unwatch()
        with contextlib.suppress(Exception):  # it is being thrown away either way
            await self.conn.close()

    def close_now(self) -> None:
        self._unwatch()
        self.conn.pgconn.finish()


class AsyncPgPool:
    def __init__(self, params: dict[str, Any], *, max_size: int, max_age: float, role: str = "", prepared: bool = True):
        self._params = params
        self._role = role  # Django's OPTIONS["assume_role"], which its connection parameters leave out
        # Named prepared statements (BEHAVRY_DB_PREPARED_STATEMENTS): off behind a pooler that
        # hands each transaction to any backend, which would not know the statement. audit/aio.py
        # also turns them off when the server says a statement it prepared is gone.
        self.prepared = prepared
        # chain -> its append queue, for audit/aio.py: they belong to this pool's loop and go with it.
        self.chain_queues: dict[str, Any] = {}
        self._max_size = max_size
        self._max_age = max_age
        self._idle: list[PooledConnection] = []
        self._opened: set[PooledConnection] = set()
        self._connecting = 0  # connects in flight count towards max_size
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    @property
    def size(self) -> int:
        return len(self._opened)

    def acquire_idle(self) -> PooledConnection | None:
        """An idle connection ready for use, without waiting, or None: then acquire(). Most
        statements find one, and skip the timeout a wait must have (audit/aio.py)."""
        if self._idle and self._idle[-1].usable(self._max_age):
            return self._idle.pop()
        return None

    async def acquire(self) -> PooledConnection:
        """An idle connection, a new one while under max_size, or the next one released."""
        while True:
            while self._idle:
                pooled = self._idle.pop()
                if pooled.usable(self._max_age):
                    return pooled
                await self._drop(pooled)
            if len(self._opened) + self._connecting < self._max_size:
                return await self._connect()
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                handed = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    # Handed a connection (or a free slot) just before being cancelled: pass it on,
                    # or the next waiter would sleep until some later release.
                    self._hand_over(waiter.result())
                elif waiter in self._waiters:
                    self._waiters.remove(waiter)
                raise
            if handed is not None:
                if handed.usable(self._max_age):
                    return handed
                await self._drop(handed)
            # else: a connection was closed, so there is room to open one; loop round

    async def _connect(self) -> PooledConnection:
        self._connecting += 1
        conn = None
        try:
            conn = await psycopg.AsyncConnection.connect(**self._params)
            if self._role:
                await conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(self._role)))
        except BaseException:
            if conn is not None:
                conn.pgconn.finish()  # opened, but SET ROLE failed or was cancelled
            self._connecting -= 1
            self._hand_over(None)  # a failed connect frees its slot for a waiter
            raise
        self._connecting -= 1
        pooled = PooledConnection(conn, asyncio.get_running_loop())
        self._opened.add(pooled)
        return pooled

    async def release(self, pooled: PooledConnection, *, broken: bool = False) -> None:
        """Back to the pool (straight to the longest waiter, if any); `broken` (it failed in use,
        or the use was cancelled part-way, so its state is unknown) closes it instead."""
        if broken or pooled not in self._opened:
            await self._drop(pooled)
            self._hand_over(None)
        else:
            self._hand_over(pooled)

    def _hand_over(self, pooled: PooledConnection | None) -> None:
        """Give a connection (or, with None, the room to open one) to the longest waiter."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(pooled)
                return
        if pooled is not None:
            self._idle.append(pooled)

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


def _text_value(value: Any) -> bytes | None:
    convert = _EXACT_TEXT.get(value.__class__)
    if convert is not None:  # the usual types, by one lookup rather than a chain of isinstance
        return convert(value)
    return _text_value_slow(value)


def _str_text(value: str) -> bytes:
    if "\x00" in value:  # libpq would cut the text there: stored and hashed would differ
        raise ValueError("text parameters cannot hold NUL")
    return value.encode()


def _datetime_text(value: datetime) -> bytes:
    if value.tzinfo is None:
        raise TypeError("naive datetime")  # would be read in the session's time zone
    return value.isoformat().encode()


_EXACT_TEXT: dict[type, Callable[[Any], bytes | None]] = {
    type(None): lambda value: None,
    str: _str_text,
    int: lambda value: int.__repr__(value).encode(),
    float: lambda value: float.__repr__(value).encode(),
    datetime: _datetime_text,
}


def _text_value_slow(value: Any) -> bytes | None:
    """Subclasses of the usual types (IntEnum, SafeString, …), converted as their base type (not
    by a subclass's repr: IntEnum prints its name), and refusals."""
    if isinstance(value, bool):
        raise TypeError("cannot send a bool as statement text")
    for base in (str, datetime, int, float):
        if isinstance(value, base):
            return _EXACT_TEXT[base](value)
    raise TypeError(f"cannot send a {type(value).__name__} as statement text")


def _has_input(fd: int) -> bool:
    poller = select.poll()  # not select(): it refuses descriptors above 1023
    poller.register(fd, select.POLLIN)
    try:
        return bool(poller.poll(0))
    except OSError:
        return True  # a socket poll() refuses is no use either


def _set_once(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


# loop -> its pool. Weak keys, though a pool's connections point back at their loop: close_all()
# is what lets a finished test loop go.
_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncPgPool] = weakref.WeakKeyDictionary()


def for_running_loop() -> AsyncPgPool:
    """The running loop's pool, made on first use from Django's default database settings."""
    loop = asyncio.get_running_loop()
    pool = _pools.get(loop)
    if pool is None:
        settings_dict = connections["default"].settings_dict
        max_age = settings_dict["CONN_MAX_AGE"]
        pool = _pools[loop] = AsyncPgPool(
            connection_params(),
            max_size=DB_THREADS,
            max_age=float("inf") if max_age is None else max_age,
            role=settings_dict["OPTIONS"].get("assume_role") or "",
            prepared=settings.BEHAVRY_DB_PREPARED_STATEMENTS,
        )
    return pool


def connection_params() -> dict[str, Any]:
    """Django's parameters for the default database, as an autocommit AsyncConnection takes them.

    Django's own cursor class and adapter context are sync-only and only shape what the ORM reads
    back; the statements run here read ids and hashes. psycopg's own automatic preparing stays off
    as in Django's settings; fetch_row prepares by name only when asked (AsyncPgPool.prepared).
    """
    params = connections["default"].get_connection_params()
    for sync_only in ("cursor_factory", "context"):
        params.pop(sync_only, None)
    params["autocommit"] = True
    return params


def close_all() -> None:
    """Close the connections of every loop that is no longer running (tests: a finished test's
    loop). A loop still running elsewhere (a server thread) keeps its pool: closing it from this
    thread would pull connections from under statements in flight."""
    for loop, pool in list(_pools.items()):
        if loop.is_running():
            continue
        pool.close_now()
        del _pools[loop]
