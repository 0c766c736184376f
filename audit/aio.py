"""The audit append from the event loop, for the proxy's tool-call path.

`audit_record_async` writes the same event as `audit_record(durable=True)`, with the same chain
rules (audit/services.py). On PostgreSQL, when this process knows the chain's head, the append is
the one autocommit statement, run on the loop's own connection (behavry/pgpool.py) rather than on
a database thread: measured 0.24-0.27 against 0.34-0.36 ms of CPU per event, and two events per
tool call. Everything else (a chain's first event here, a chain another process is writing, SQLite)
takes the locking append on a database thread, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import DatabaseError

from audit import services
from audit.models import AuditEvent
from audit.services import (
    HEAD_HINTS_MAX,
    AuditWriteError,
    audit_event_fields,
    audit_record,
    forget_head_hint,
    locking_append,
    one_statement_append,
    one_statement_sql,
)
from behavry import dbthreads, pgpool
from behavry.dbthreads import on_db_thread

logger = logging.getLogger("behavry.audit")


async def audit_record_async(
    *, on_wire: asyncio.Future | None = None, timeout: float | None = None, **event: Any
) -> int:
    """Append one event durably and return its id; what `audit_record(durable=True, **event)`
    does, awaited from the event loop. Raises AuditWriteError when the event is not recorded.

    `timeout` (seconds; BEHAVRY_DECISION_TIMEOUT_SECONDS by default) bounds the append, the wait
    for a connection or a database thread included: past it the event is not recorded and this
    raises. A decision must be denied on time; an outcome may pass a longer one.

    A cancelled caller may leave the event written or not; the head hint is dropped then, so the
    next append here re-reads the head under the lock.

    `on_wire`, if given, is resolved as soon as the event will commit without this process: its one
    statement has been handed to the socket. On the other paths (a database thread, SQLite) that
    is when the append has finished, failed or not. If that statement then finds the chain moved
    (another process appended), the locking append that follows runs after on_wire.
    """
    try:
        return await _append(on_wire, settings.BEHAVRY_DECISION_TIMEOUT_SECONDS if timeout is None else timeout, event)
    finally:
        if on_wire is not None and not on_wire.done():
            on_wire.set_result(None)


async def _append(on_wire: asyncio.Future | None, timeout: float, event: dict[str, Any]) -> int:
    if not dbthreads.PARALLEL_DB:  # SQLite: audit_record itself, on Channels' database thread
        return (await _on_thread_bounded("", timeout, functools.partial(audit_record, durable=True, **event))).pk
    fields, texts = audit_event_fields(**event)
    chain = fields["chain"]
    pool = pgpool.for_running_loop()
    locks = pool.chain_locks
    if len(locks) >= HEAD_HINTS_MAX:
        locks.clear()  # a lock held now still works; at worst two appends race and one misses
    lock = locks.get(chain)
    if lock is None:
        lock = locks[chain] = asyncio.Lock()
    async with lock:
        hint = services.usable_head_hint(chain)
        if hint is not None:
            statement = one_statement_append(chain, hint, fields, texts)
            row = await _execute_on_loop(pool, chain, statement.params, on_wire, timeout)
            if statement.applied(row) and row is not None:
                return row[0]
        # The server gives up waiting for the head's row lock after `timeout` and nothing commits;
        # the hop's own limit, a second later, is the backstop for a database that stopped
        # answering (an append the thread still finishes after it is in the trail, its call denied).
        limit = timeout + 1
        return (await _on_thread_bounded(chain, limit, _locking_append, fields, texts, timeout)).pk


async def _on_thread_bounded(chain: str, limit: float, fn: Callable[..., AuditEvent], *args: Any) -> AuditEvent:
    """An append on a database thread, bounded, the wait for a free thread included: on SQLite
    every database step shares one thread, so a stuck one would hold every append behind it. A
    thread cannot be stopped; if it commits after the limit, the trail holds a decision that was
    then denied as fail-closed, never the reverse."""
    try:
        async with asyncio.timeout(limit):
            return await on_db_thread(fn, *args)
    except TimeoutError as exc:
        if chain:
            forget_head_hint(chain)
        logger.error("audit write failed: no answer in %s s", limit)
        raise AuditWriteError(f"audit write failed: {exc!r}") from exc


async def _execute_on_loop(
    pool: pgpool.AsyncPgPool, chain: str, params: list[Any], on_wire: asyncio.Future | None, timeout: float
) -> tuple | None:
    """The one statement, bounded by `timeout` (waiting for a connection included): a chain head
    locked elsewhere (audit_truncate, a stuck transaction) or a database that stopped answering
    fails the append, so the call is denied, instead of holding it and a pooled connection
    indefinitely. The statement is cancelled on the server; if it committed first, the trail
    holds a decision that was then denied as fail-closed, never the reverse."""
    pooled = pool.acquire_idle()
    if pooled is None:
        try:
            async with asyncio.timeout(timeout):
                pooled = await pool.acquire()
        except Exception as exc:
            logger.error("audit write failed: %s", exc)
            raise AuditWriteError(f"audit write failed: no database connection: {exc!r}") from exc
    try:
        async with asyncio.timeout(timeout):
            raw = await _fetch(pool, pooled, params, on_wire)
    except BaseException as exc:
        # Written or not is unknown (a cancel or timeout mid-statement, a connection lost after
        # sending): forget the hint, so the next append takes the lock and learns the real head.
        forget_head_hint(chain)
        try:
            if isinstance(exc, TimeoutError):
                await _cancel_on_server(pooled)
        finally:  # even if the caller is cancelled meanwhile: its pool slot must come back
            await pool.release(pooled, broken=True)
        if isinstance(exc, Exception):
            logger.error("audit write failed: %r", exc)
            raise AuditWriteError(f"audit write failed: {exc!r}") from exc
        raise
    await pool.release(pooled)
    if raw is None:
        return None
    event_id, seq, last_hash = raw
    return (None if event_id is None else int(event_id), int(seq or 0), (last_hash or b"").decode())


# invalid_sql_statement_name, duplicate_prepared_statement: a pooler in transaction mode moved
# this client to another backend between the PREPARE and an EXECUTE.
_PREPARED_STATEMENT_GONE = frozenset({"26000", "42P05"})


async def _fetch(
    pool: pgpool.AsyncPgPool, pooled: pgpool.PooledConnection, params: list[Any], on_wire: asyncio.Future | None
) -> tuple[bytes | None, ...] | None:
    if not pool.prepared:
        return await pooled.fetch_row(_dollar_sql(), params, on_wire=on_wire)
    try:
        return await pooled.fetch_row(_dollar_sql(), params, name=_STATEMENT_NAME, on_wire=on_wire)
    except pgpool.StatementError as exc:
        if exc.sqlstate not in _PREPARED_STATEMENT_GONE:
            raise
    # Behind a pooler that does not keep prepared statements per client: this loop's pool stops
    # naming them, and this append, which the server refused before running it, goes once more
    # unnamed on the same connection (the refusal left it idle). Only this once per process is an
    # answer's on_wire resolved before the statement that commits is sent.
    pool.prepared = False
    logger.warning(
        "PostgreSQL lost a prepared statement (a pooler in transaction mode?): audit appends go"
        " unprepared from now on; set BEHAVRY_DB_PREPARED_STATEMENTS=false to start that way"
    )
    return await pooled.fetch_row(_dollar_sql(), params, on_wire=on_wire)


async def _cancel_on_server(pooled: pgpool.PooledConnection) -> None:
    """Best effort: the connection is dropped next, but a statement waiting on a lock would
    otherwise stay queued on the server (it notices a closed client only when it writes)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(pooled.conn.cancel_safe(), 2)


_STATEMENT_NAME = b"behavry_audit_append"


@functools.lru_cache(maxsize=1)
def _dollar_sql() -> bytes:
    """one_statement_sql() with libpq's numbered placeholders."""
    parts = one_statement_sql().split("%s")
    return "".join(f"{part}${i}" for i, part in enumerate(parts[:-1], 1)).encode() + parts[-1].encode()


def _locking_append(fields: dict[str, Any], texts: dict[str, str], lock_timeout: float) -> AuditEvent:
    try:
        return locking_append(fields, texts, lock_timeout=lock_timeout)
    except DatabaseError as exc:
        logger.error("audit write failed: %s", exc)
        raise AuditWriteError(f"audit write failed: {exc}") from exc
