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
import collections
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
    AuditWriteError,
    audit_event_fields,
    audit_record,
    batch_append,
    batch_statement_sql,
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
    token = object()
    appends_in_flight.add(token)
    try:
        return await _append(on_wire, settings.BEHAVRY_DECISION_TIMEOUT_SECONDS if timeout is None else timeout, event)
    finally:
        appends_in_flight.discard(token)
        if on_wire is not None and not on_wire.done():
            on_wire.set_result(None)


# One token per append started in this process and not yet finished (and each batch being written),
# on any event loop; set operations are atomic under the GIL. Tests wait for it to empty before
# they empty the database.
appends_in_flight: set[object] = set()


async def _append(on_wire: asyncio.Future | None, timeout: float, event: dict[str, Any]) -> int:
    if not dbthreads.PARALLEL_DB:  # SQLite: audit_record itself, on Channels' database thread
        return (await _on_thread_bounded("", timeout, functools.partial(audit_record, durable=True, **event))).pk
    fields, texts = audit_event_fields(**event)
    chain = fields["chain"]
    pool = pgpool.for_running_loop()
    queues = pool.chain_queues
    queue = queues.get(chain)
    if queue is None:  # nobody is appending to this chain here: it goes alone (_pass_on drops idle queues)
        queue = queues[chain] = _ChainQueue(chain, queues)
    pending = _Pending(fields, texts, on_wire, timeout)
    if queue.busy:
        return await _wait_turn(queue, pool, pending)
    queue.busy = True
    return await _lead(queue, pool, [pending])


# Group commit, per chain and event loop. One append at a time goes to the database for a chain:
# its statement builds on the head the one before it left, and a second statement in flight would
# miss. Appends that arrive meanwhile queue; when the statement returns, the first of them writes
# all those queued (up to BATCH_MAX) in one statement, one transaction: one commit and one WAL
# flush for all. Without this, a database that stalls for 30 ms (a slow fsync, the host's other
# work) leaves a backlog that clears one round trip per event, and each queued call waits for all
# of them; with it, the backlog clears in one round trip. An append that finds nobody writing
# goes alone, as before; nothing waits to gather a batch.
BATCH_MAX = 16


class _ChainQueue:
    __slots__ = ("busy", "chain", "owner", "waiting")

    def __init__(self, chain: str, owner: dict[str, Any]) -> None:
        self.chain, self.owner = chain, owner  # the pool's table, which holds only chains in use
        self.busy = False  # an append of this chain is in flight (its writer hands over when done)
        self.waiting: collections.deque[_Pending] = collections.deque()


class _Pending:
    __slots__ = ("fields", "on_wire", "taken", "texts", "timeout", "turn")

    def __init__(self, fields: dict[str, Any], texts: dict[str, str], on_wire: asyncio.Future | None, timeout: float):
        self.fields, self.texts, self.on_wire, self.timeout = fields, texts, on_wire, timeout
        # For a queued append: the event's id once written in another's batch, its error, or
        # _YOUR_TURN when this caller is to write the queue.
        self.turn: asyncio.Future | None = None
        self.taken = False  # in a batch being written: its caller no longer decides its fate


_YOUR_TURN = object()


async def _wait_turn(queue: _ChainQueue, pool: pgpool.AsyncPgPool, pending: _Pending) -> int:
    pending.turn = turn = asyncio.get_running_loop().create_future()
    queue.waiting.append(pending)
    try:
        outcome = await turn  # an AuditWriteError set by the batch that held it is raised here
    except asyncio.CancelledError:
        if not pending.taken:  # not sent: it is simply not written
            with contextlib.suppress(ValueError):  # _pass_on may have dropped it already
                queue.waiting.remove(pending)
            if turn.done() and not turn.cancelled() and turn.result() is _YOUR_TURN:
                _pass_on(queue)  # handed the queue as it was cancelled: the next one writes
        raise
    if outcome is not _YOUR_TURN:
        return outcome
    queue.waiting.remove(pending)  # first in line: this caller writes the queue, its own event first
    batch = [pending]
    # A batch shares one timeout, so it takes only the run of queued appends with this one's: an
    # outcome (60 s) must not be cancelled at a decision's timeout, nor a decision wait past its own.
    while queue.waiting and len(batch) < BATCH_MAX:
        member = queue.waiting[0]
        if member.turn is None or member.turn.done():  # its caller was cancelled
            queue.waiting.popleft()
            continue
        if member.timeout != pending.timeout:
            break
        batch.append(queue.waiting.popleft())
    for member in batch:
        member.taken = True
    return await _lead(queue, pool, batch)


def _pass_on(queue: _ChainQueue) -> None:
    """The chain's append is done: wake the first waiting append to write the queue, or go idle."""
    while queue.waiting:
        turn = queue.waiting[0].turn
        if turn is not None and not turn.done():
            turn.set_result(_YOUR_TURN)
            return
        queue.waiting.popleft()  # its caller was cancelled; its own handler has let go of it
    queue.busy = False
    if queue.owner.get(queue.chain) is queue:
        del queue.owner[queue.chain]


async def _lead(queue: _ChainQueue, pool: pgpool.AsyncPgPool, batch: list[_Pending]) -> int:
    """Write `batch` (the caller's own event first), then hand the chain on. A batch of several
    events is written in a task of its own, which settles each event as soon as its result is
    known, so that cancelling this caller (an agent hanging up) neither fails nor leaves unknown
    the events of the calls that queued behind it."""
    if len(batch) == 1:
        try:
            return await _write_alone(pool, batch[0])
        finally:
            _pass_on(queue)
    loop = asyncio.get_running_loop()
    mine = batch[0].turn = loop.create_future()  # settled like the others'
    task = loop.create_task(_write_batch(pool, batch))
    # In flight until written, even if every caller in it is gone; the set also keeps the task
    # alive (the loop holds tasks only weakly).
    appends_in_flight.add(task)
    task.add_done_callback(functools.partial(_batch_done, queue))
    return await mine


def _batch_done(queue: _ChainQueue, task: asyncio.Task) -> None:
    appends_in_flight.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: every member has heard of it already
    _pass_on(queue)


async def _write_alone(pool: pgpool.AsyncPgPool, pending: _Pending) -> int:
    fields, texts, timeout = pending.fields, pending.texts, pending.timeout
    chain = fields["chain"]
    hint = services.usable_head_hint(chain)
    if hint is not None:
        statement = one_statement_append(chain, hint, fields, texts)
        sql, name, params = _dollar_sql(), _STATEMENT_NAME, statement.params
        row = await _execute_on_loop(pool, chain, sql, name, params, pending.on_wire, timeout)
        if statement.applied(row) and row is not None and row[0] is not None:
            return int(row[0])
    return (await _locked_append(chain, fields, texts, timeout)).pk


async def _locked_append(chain: str, fields: dict[str, Any], texts: dict[str, str], timeout: float) -> AuditEvent:
    # The server gives up waiting for the head's row lock after `timeout` and nothing commits;
    # the hop's own limit, a second later, is the backstop for a database that stopped answering
    # (an append the thread still finishes after it is in the trail, its call denied).
    return await _on_thread_bounded(chain, timeout + 1, _locking_append, fields, texts, timeout)


async def _write_batch(pool: pgpool.AsyncPgPool, batch: list[_Pending]) -> None:
    """Append `batch` in chain order; each member's turn gets its event's id or its error."""
    try:
        await _append_batch(pool, batch)
    except BaseException as exc:  # a cancellation at shutdown too: every member must hear
        _settle(batch, [exc] * len(batch))  # those not settled yet
        if not isinstance(exc, Exception):
            raise


def _settle(members: list[_Pending], results: list[int | BaseException]) -> None:
    for member, result in zip(members, results, strict=True):
        turn = member.turn
        if turn is None or turn.done():  # its caller was cancelled after it was taken
            continue
        if isinstance(result, int):
            turn.set_result(result)
        elif isinstance(result, AuditWriteError):
            turn.set_exception(AuditWriteError(str(result)))  # one instance each: tracebacks stay apart
        else:
            turn.set_exception(AuditWriteError(f"audit write failed: {result!r}"))


async def _append_batch(pool: pgpool.AsyncPgPool, batch: list[_Pending]) -> None:
    chain = batch[0].fields["chain"]
    hint = services.usable_head_hint(chain)
    if hint is not None:
        statement = batch_append(chain, hint, [(member.fields, member.texts) for member in batch])
        wires = [member.on_wire for member in batch if member.on_wire is not None]
        on_wire = None
        if wires:
            on_wire = asyncio.get_running_loop().create_future()
            on_wire.add_done_callback(functools.partial(_resolve_all, wires))
        sql, name = _batch_sql(len(batch))
        try:
            row = await _execute_on_loop(pool, chain, sql, name, statement.params, on_wire, batch[0].timeout)
        except AuditWriteError as exc:
            if not _refused_for_its_values(exc):
                raise
            # One event the server will not store (a value out of range, a constraint) must not
            # take the others down: each goes alone below, and only that one fails.
            row = None
        ids = statement.applied(row)
        if ids is not None:  # the insert is all or nothing: one id per event, in chain order
            _settle(batch, list(ids))
            return
    # A chain another process wrote, or its first event: each through the locking append, in
    # order, each caller answered as soon as its own event is written.
    for member in batch:
        result: int | BaseException
        try:
            result = (await _locked_append(chain, member.fields, member.texts, member.timeout)).pk
        except AuditWriteError as exc:  # what the locking append raises; each event stands alone here
            result = exc
        _settle([member], [result])


def _refused_for_its_values(exc: AuditWriteError) -> bool:
    """The server refused the statement for what it held: a data exception (SQLSTATE class 22)
    or an integrity violation (23), not a failure of the database or the connection."""
    cause = exc.__cause__
    return isinstance(cause, pgpool.StatementError) and cause.sqlstate[:2] in ("22", "23")


def _resolve_all(futures: list[asyncio.Future], _done: asyncio.Future) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


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
    pool: pgpool.AsyncPgPool,
    chain: str,
    sql: bytes,
    name: bytes,
    params: list[Any],
    on_wire: asyncio.Future | None,
    timeout: float,
) -> tuple[str | None, int, str] | None:
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
            raw = await _fetch(pool, pooled, sql, name, params, on_wire)
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
    event_ids, seq, last_hash = raw  # event_ids: one id, or a batch's ids comma-separated
    return (None if event_ids is None else event_ids.decode(), int(seq or 0), (last_hash or b"").decode())


# invalid_sql_statement_name, duplicate_prepared_statement: a pooler in transaction mode moved
# this client to another backend between the PREPARE and an EXECUTE.
_PREPARED_STATEMENT_GONE = frozenset({"26000", "42P05"})


async def _fetch(
    pool: pgpool.AsyncPgPool,
    pooled: pgpool.PooledConnection,
    sql: bytes,
    name: bytes,
    params: list[Any],
    on_wire: asyncio.Future | None,
) -> tuple[bytes | None, ...] | None:
    if not pool.prepared:
        return await pooled.fetch_row(sql, params, on_wire=on_wire)
    try:
        return await pooled.fetch_row(sql, params, name=name, on_wire=on_wire)
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
    return await pooled.fetch_row(sql, params, on_wire=on_wire)


async def _cancel_on_server(pooled: pgpool.PooledConnection) -> None:
    """Best effort: the connection is dropped next, but a statement waiting on a lock would
    otherwise stay queued on the server (it notices a closed client only when it writes)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(pooled.conn.cancel_safe(), 2)


_STATEMENT_NAME = b"behavry_audit_append"


@functools.lru_cache(maxsize=1)
def _dollar_sql() -> bytes:
    """one_statement_sql() with libpq's numbered placeholders."""
    return _numbered(one_statement_sql())


@functools.lru_cache(maxsize=BATCH_MAX)
def _batch_sql(size: int) -> tuple[bytes, bytes]:
    """batch_statement_sql(size) with numbered placeholders, and its prepared statement's name."""
    return _numbered(batch_statement_sql(size)), _STATEMENT_NAME + b"_%d" % size


def _numbered(sql: str) -> bytes:
    parts = sql.split("%s")
    return "".join(f"{part}${i}" for i, part in enumerate(parts[:-1], 1)).encode() + parts[-1].encode()


def _locking_append(fields: dict[str, Any], texts: dict[str, str], lock_timeout: float) -> AuditEvent:
    try:
        return locking_append(fields, texts, lock_timeout=lock_timeout)
    except DatabaseError as exc:
        logger.error("audit write failed: %s", exc)
        raise AuditWriteError(f"audit write failed: {exc}") from exc
