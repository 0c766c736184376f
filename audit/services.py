"""Writing the audit trail. `audit_record` is the only function that creates AuditEvent rows.

If it cannot record, it raises `AuditWriteError`; callers on the tool-call path then deny, and
admin services let the error roll back the change it would have described ("if it cannot be
recorded, it does not happen").
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone

from audit.chain import (
    ADMIN_CHAIN,
    HASHED_FIELDS,
    JSON_FIELDS,
    agent_chain,
    canonical_json,
    checkpoint_signature,
    event_hash_from_text,
    finding_hash,
    head_signature,
    timestamp_text,
)
from audit.db import retention_delete_window
from audit.models import GENESIS_HASH, AuditChainHead, AuditCheckpoint, AuditEvent, AuditKind
from audit.redaction import clean_text, redact_arguments
from behavry.actors import SYSTEM, Actor

logger = logging.getLogger("behavry.audit")


class AuditWriteError(RuntimeError):
    """The event could not be recorded; whatever it describes must not go ahead."""


def _lock_head(chain: str) -> AuditChainHead:
    """Lock (creating on first use) the head row of `chain` for this transaction."""
    head = AuditChainHead.objects.select_for_update().filter(chain=chain).first()
    if head is not None:
        return head
    try:
        with transaction.atomic():
            AuditChainHead.objects.create(chain=chain)
    except IntegrityError:
        pass  # a concurrent first append created it; lock theirs
    return AuditChainHead.objects.select_for_update().get(chain=chain)


def _text(value: Any, limit: int) -> str:
    if value.__class__ is str and value.isascii() and "\x00" not in value:  # the usual: nothing to clean
        return value[:limit]
    return clean_text(str(value or ""))[:limit]


def audit_record(*, durable: bool = False, **event: Any) -> AuditEvent:
    """Append one event to its chain and return it, committed. `event` is what
    audit_event_fields() takes.

    1. Redact arguments and hash DLP matches (raw values never reach the table).
    2. In one transaction: lock the chain head, number the event head.seq + 1, hash it onto
       head.last_hash, insert it, move and re-sign the head (see _append).
    3. With `durable=True` (the tool-call path) this must be the outermost transaction, so the
       event is committed when the function returns. Called inside a service's transaction it
       commits together with the change it records, or not at all.
    The event loop's version, without a database thread, is audit.aio.audit_record_async.
    """
    fields, texts = audit_event_fields(**event)
    try:
        if durable and _one_statement_possible():
            event_row = _append_one_statement(fields, texts)
        else:
            with transaction.atomic(durable=durable):
                event_row = _append(fields, texts)
    except DatabaseError as exc:
        logger.error("audit write failed: %s", exc)
        raise AuditWriteError(f"audit write failed: {exc}") from exc
    return event_row


_AUDIT_KINDS = frozenset(AuditKind.values)  # AuditKind.values builds a new list on every access


def audit_event_fields(
    *,
    kind: str,
    actor: Actor,
    agent: Any = None,
    session: str = "",
    server: str = "",
    tool: str = "",
    action: str = "",
    resource: str = "",
    decision: str = "",
    policy_id: str = "",
    reason: str = "",
    request_id: str = "",
    latency_ms: float | None = None,
    arguments: Any = None,
    dlp_findings: Iterable[dict[str, Any]] = (),
    trace: list[Any] | None = None,
    details: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """An event's columns, cleaned and redacted, and the canonical text of its JSON columns;
    everything but the chain position (seq, timestamp, hashes). No database access.

    `agent` is an Agent or anything with `pk` and `name`. Decision and outcome events need one
    and go on that agent's chain; admin events go on the admin chain.
    """
    if kind not in _AUDIT_KINDS:
        raise AuditWriteError(f"unknown audit kind {kind!r}")
    if kind != AuditKind.ADMIN and agent is None:
        raise AuditWriteError(f"{kind} events need an agent")
    findings = list(dlp_findings or ())
    try:
        stored_findings = [
            {k: v for k, v in f.items() if k != "value"} | {"hash": finding_hash(str(f.get("value", "")))}
            for f in findings
        ]
        fields: dict[str, Any] = {
            "chain": ADMIN_CHAIN if kind == AuditKind.ADMIN else agent_chain(agent.pk),
            "kind": kind,
            "agent_id": agent.pk if agent is not None else None,
            "agent_name": _text(getattr(agent, "name", ""), 100),
            "session": _text(session, 64),
            "server": _text(server, 64),
            "tool": _text(tool, 200),
            "action": _text(action, 64),
            "resource": _text(resource, 1000),
            "decision": _text(decision, 16),
            "policy_id": _text(policy_id, 200),
            "reason": _text(reason, 10_000),
            "request_id": _text(request_id, 100),
            "actor": _text(actor.label, 300),
            "latency_ms": float(latency_ms) if latency_ms is not None else None,
            "arguments": redact_arguments(arguments if arguments is not None else {}, findings),
            "trace": redact_arguments(trace or [], findings),
            "dlp_findings": stored_findings,
            "details": redact_arguments(details or {}, findings),
        }
        # Refuse unserialisable values before taking the lock. The other columns are strings, an
        # id and latency_ms, which only NaN or infinity can spoil; the texts are what gets hashed.
        texts = {name: canonical_json(fields[name]) for name in JSON_FIELDS}
        if fields["latency_ms"] is not None and not math.isfinite(fields["latency_ms"]):
            raise ValueError("audit fields cannot hold NaN or infinity")
    except (TypeError, ValueError) as exc:
        raise AuditWriteError(f"audit event is not serialisable: {exc}") from exc
    return fields, texts


_EVENT_COLUMNS = (*HASHED_FIELDS, "previous_hash", "event_hash")
# Column names are module constants, never input: the S608 warnings below are about f-strings only.
_INSERT_SQL = (
    f"INSERT INTO audit_auditevent ({', '.join(_EVENT_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join(['%s'] * len(_EVENT_COLUMNS))}) RETURNING id"
)
_CLAIM_SQL = "UPDATE audit_auditchainhead SET seq = seq + 1 WHERE chain = %s RETURNING seq, last_hash"
_NEW_HEAD_SQL = (
    "INSERT INTO audit_auditchainhead (chain, seq, last_hash, signature, updated_at) "
    "VALUES (%s, 0, %s, '', %s) ON CONFLICT (chain) DO NOTHING"
)
_MOVE_HEAD_SQL = "UPDATE audit_auditchainhead SET last_hash = %s, signature = %s, updated_at = %s WHERE chain = %s"


@lru_cache(maxsize=1)
def _unprepared_server_binding_cursor() -> type:
    from django.db.backends.postgresql.base import ServerBindingCursor

    class UnpreparedServerBindingCursor(ServerBindingCursor):
        # No server-side prepared statements: a pooler in transaction mode (pgbouncer) would
        # route the next execution to a backend that never saw the PREPARE.
        def execute(self, query, params=None, *, prepare=None, binary=None):
            return super().execute(query, params, prepare=False, binary=binary)

    return UnpreparedServerBindingCursor


def _append_cursor():
    """On PostgreSQL, a cursor that sends the values apart from the SQL (server-side binding).

    Django's default client-side binding quotes each of the ~25 values into the statement text in
    Python, which profiling showed as the largest share of the driver's CPU on the tool-call path.
    Wrapped like connection.cursor(), so error translation and the query log stay the same.
    """
    if connection.vendor != "postgresql":
        return connection.cursor()
    connection.ensure_connection()
    raw = _unprepared_server_binding_cursor()(connection.connection)
    return connection.make_debug_cursor(raw) if connection.queries_logged else connection.make_cursor(raw)


def _append(fields: dict[str, Any], texts: dict[str, str]) -> AuditEvent:
    """Append inside the caller's transaction in three round trips (this is on every tool call).

    1. Claim the next seq and read the previous hash with one UPDATE ... RETURNING, which also
       row-locks the chain head until commit (creating the head on a chain's first event).
    2. Hash the event onto the previous hash, from the canonical text that will be stored.
    3. Insert the event and move the signed head (one statement on PostgreSQL).
    """
    chain = fields["chain"]
    ops = connection.ops
    with _append_cursor() as cursor:
        cursor.execute(_CLAIM_SQL, [chain])
        row = cursor.fetchone()
        if row is None:
            now = ops.adapt_datetimefield_value(timezone.now())
            cursor.execute(_NEW_HEAD_SQL, [chain, GENESIS_HASH, now])
            cursor.execute(_CLAIM_SQL, [chain])
            row = cursor.fetchone()
        seq, previous_hash = row
        timestamp = timezone.now()
        values = {**fields, **texts, "seq": seq, "timestamp": timestamp}
        digest = event_hash_from_text(values, previous_hash)
        params = [
            ops.adapt_datetimefield_value(timestamp) if name == "timestamp" else values[name] for name in HASHED_FIELDS
        ]
        params += [previous_hash, digest]
        head = [digest, head_signature(chain, seq, digest), ops.adapt_datetimefield_value(timestamp), chain]
        if connection.vendor == "postgresql":
            statement = f"WITH ins AS ({_INSERT_SQL}) {_MOVE_HEAD_SQL} RETURNING (SELECT id FROM ins)"  # noqa: S608
            cursor.execute(statement, params + head)
            event_id = cursor.fetchone()[0]
        else:
            cursor.execute(_INSERT_SQL, params)
            event_id = cursor.fetchone()[0]
            cursor.execute(_MOVE_HEAD_SQL, head)
    return AuditEvent(
        id=event_id, **{**fields, "seq": seq, "timestamp": timestamp}, previous_hash=previous_hash, event_hash=digest
    )


# chain -> (seq, hash) of the newest event this process appended there. Only a hint: the
# one-statement append moves the head only if the head still holds exactly this, so a stale or
# wrong hint costs a retry, never a broken chain. Plain dict operations are atomic under the GIL,
# which is all the database threads need.
_head_hints: dict[str, tuple[int, str]] = {}
# chain -> monotonic time until which it counts as contended: appends take the row lock directly.
_contended_until: dict[str, float] = {}
_chain_locks: dict[str, threading.Lock] = {}
CONTENDED_SECONDS = 1.0
HEAD_HINTS_MAX = 100_000


def _one_statement_possible() -> bool:
    """A durable append outside any transaction, on PostgreSQL: one autocommit statement is the
    whole transaction, so the append costs one round trip instead of four (BEGIN, claim, insert,
    COMMIT). Inside a transaction, or on SQLite, the locking append runs."""
    return connection.vendor == "postgresql" and not connection.in_atomic_block and connection.get_autocommit()


@lru_cache(maxsize=1)
def one_statement_sql() -> str:
    """Move the head from (seq, hash) to (seq + 1, new hash) and insert the event only if the head
    moved, in one statement. The last SELECT returns a row only if the chain has a head: no row
    means its first event (which creates the head), a row without an event id a stale hint."""
    casts = ", ".join(f"%s::{_cast_type(name)}" for name in _EVENT_COLUMNS)
    return (
        "WITH moved AS ("  # noqa: S608 - column names and types come from the model, never input
        " UPDATE audit_auditchainhead SET seq = seq + 1, last_hash = %s, signature = %s, updated_at = %s"
        " WHERE chain = %s AND seq = %s AND last_hash = %s RETURNING seq"
        f"), ins AS (INSERT INTO audit_auditevent ({', '.join(_EVENT_COLUMNS)}) SELECT {casts} FROM moved RETURNING id)"
        " SELECT (SELECT id FROM ins), seq, last_hash FROM audit_auditchainhead WHERE chain = %s"
    )


@lru_cache(maxsize=32)
def batch_statement_sql(size: int) -> str:
    """one_statement_sql() for `size` events in a row on one chain: the head moves from (seq,
    hash) to (seq + size, the last event's hash) and all are inserted, or none. One transaction,
    so one commit (one WAL flush) for all of them. The last SELECT's first column lists the new
    ids in chain order, comma-separated."""
    casts = ", ".join(f"%s::{_cast_type(name)}" for name in _EVENT_COLUMNS)
    rows = ", ".join([f"({casts})"] * size)
    return (
        "WITH moved AS ("  # noqa: S608 - column names and types come from the model, never input
        f" UPDATE audit_auditchainhead SET seq = seq + {int(size)}, last_hash = %s, signature = %s, updated_at = %s"
        " WHERE chain = %s AND seq = %s AND last_hash = %s RETURNING seq"
        f"), ins AS (INSERT INTO audit_auditevent ({', '.join(_EVENT_COLUMNS)})"
        f" SELECT batch.* FROM moved, (VALUES {rows}) AS batch RETURNING id, seq)"
        " SELECT (SELECT string_agg(id::text, ',' ORDER BY seq) FROM ins), seq, last_hash"
        " FROM audit_auditchainhead WHERE chain = %s"
    )


def _cast_type(column: str) -> str:
    # Strings as text, not varchar(n): an explicit cast to varchar(n) truncates silently, while
    # storing text in a varchar(n) column refuses a value too long, as a plain INSERT does.
    field = AuditEvent._meta.get_field(column)
    return "text" if field.get_internal_type() == "CharField" else str(field.db_type(connection))


def _append_one_statement(fields: dict[str, Any], texts: dict[str, str]) -> AuditEvent:
    """Append in one autocommit statement when this process knows the chain's head (its own last
    append there), else through the locking append, whose result becomes the hint.

    If another process appended in between, the statement inserts nothing; the locking append,
    which always succeeds, takes over, and the chain counts as contended for CONTENDED_SECONDS:
    its appends go straight to the lock. Under contention an optimistic attempt mostly waits for
    the row lock and then misses (bench: 8 processes on one chain, 373 events/s with retries
    against 602 with the lock), while a chain written by one process saves three round trips per
    event. Timestamps are taken after the head is known, so they still increase along the chain.
    """
    chain = fields["chain"]
    # One append per chain at a time in this process: threads of one process (the proxy's
    # database pool) then never invalidate each other's hint, and wait here instead of on the
    # head row lock. A miss means another process wrote.
    if len(_chain_locks) >= HEAD_HINTS_MAX:
        _chain_locks.clear()  # a lock held now still works; at worst two appends race and one misses
    with _chain_locks.setdefault(chain, threading.Lock()):
        return _append_one_statement_locked(chain, fields, texts)


def _append_one_statement_locked(chain: str, fields: dict[str, Any], texts: dict[str, str]) -> AuditEvent:
    hint = usable_head_hint(chain)
    if hint is not None:
        statement = one_statement_append(chain, hint, fields, texts)
        with _append_cursor() as cursor:
            cursor.execute(one_statement_sql(), statement.params)
            row = cursor.fetchone()
        if statement.applied(row):
            return AuditEvent(
                id=row[0],
                **{**fields, "seq": statement.seq, "timestamp": statement.timestamp},
                previous_hash=hint[1],
                event_hash=statement.digest,
            )
    return locking_append(fields, texts)


def usable_head_hint(chain: str) -> tuple[int, str] | None:
    """This process's last (seq, hash) on `chain`, unless there is none or the chain is contended."""
    hint = _head_hints.get(chain)
    if hint is None or _contended_until.get(chain, 0.0) > time.monotonic():
        return None
    return hint


@dataclass
class OneStatementAppend:
    """The parameters of one_statement_sql() for the event after `hint`, and reading its result."""

    chain: str
    seq: int
    timestamp: datetime
    digest: str
    params: list[Any]

    def applied(self, row: tuple | None) -> bool:
        """True if the statement appended (the hint then moves on); on a miss, the chain is marked
        contended. No row means the chain had no head yet (its first event), a row without an event
        id that another process appended since the hint."""
        if row is not None and row[0] is not None:
            _remember_head(self.chain, self.seq, self.digest)
            return True
        if row is not None:
            _bounded_put(_contended_until, self.chain, time.monotonic() + CONTENDED_SECONDS)
        return False


def one_statement_append(
    chain: str, hint: tuple[int, str], fields: dict[str, Any], texts: dict[str, str]
) -> OneStatementAppend:
    seq, previous_hash = hint[0] + 1, hint[1]
    timestamp = timezone.now()
    # The timestamp goes as the text that is hashed (ISO 8601, UTC, microseconds), which PostgreSQL
    # reads back as the same instant: one conversion per event instead of three.
    stamp = timestamp_text(timestamp)
    values = {**fields, **texts, "seq": seq, "timestamp": stamp}
    digest = event_hash_from_text(values, previous_hash)
    params: list[Any] = [digest, head_signature(chain, seq, digest), stamp, chain, hint[0], previous_hash]
    params += [values[name] for name in HASHED_FIELDS]
    params += [previous_hash, digest, chain]
    return OneStatementAppend(chain, seq, timestamp, digest, params)


@dataclass
class BatchAppend:
    """The parameters of batch_statement_sql() for the events after `hint`, and reading its result."""

    chain: str
    last: OneStatementAppend  # the last event: where the head moves to
    params: list[Any]

    def applied(self, row: tuple | None) -> list[int] | None:
        """The new ids in chain order if the statement appended (the hint then moves on), else
        None; a miss marks the chain contended, as OneStatementAppend.applied does."""
        if row is not None and row[0] is not None:
            _remember_head(self.chain, self.last.seq, self.last.digest)
            return [int(part) for part in str(row[0]).split(",")]
        if row is not None:
            _bounded_put(_contended_until, self.chain, time.monotonic() + CONTENDED_SECONDS)
        return None


def batch_append(chain: str, hint: tuple[int, str], events: list[tuple[dict[str, Any], dict[str, str]]]) -> BatchAppend:
    """Chain `events` (fields and texts, as audit_event_fields() returns them) one after the other
    onto `hint`: each is hashed onto the one before, and timestamps increase along the chain."""
    rows: list[Any] = []
    head = hint
    statement = None
    for fields, texts in events:
        statement = one_statement_append(chain, head, fields, texts)
        rows += statement.params[6:-1]  # the event's columns, as in one_statement_sql()
        head = (statement.seq, statement.digest)
    assert statement is not None, "a batch holds at least one event"
    params: list[Any] = [statement.digest, head_signature(chain, statement.seq, statement.digest)]
    params += [timestamp_text(statement.timestamp), chain, hint[0], hint[1], *rows, chain]
    return BatchAppend(chain, statement, params)


def locking_append(fields: dict[str, Any], texts: dict[str, str], *, lock_timeout: float | None = None) -> AuditEvent:
    """The always-correct durable append (BEGIN, row lock, insert, COMMIT); its result becomes this
    process's hint for the chain.

    `lock_timeout` (seconds, PostgreSQL) bounds the wait for the chain head's row lock: the
    proxy's appends give up (and the call is denied) instead of holding a database thread for as
    long as someone else holds the head (audit_truncate, a stuck transaction). It costs a round
    trip, so only the proxy's call path passes it.
    """
    with transaction.atomic(durable=True):
        if lock_timeout is not None and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT set_config('lock_timeout', %s, true)", [f"{max(1, round(lock_timeout * 1000))}ms"]
                )
        event = _append(fields, texts)
    _remember_head(fields["chain"], event.seq, event.event_hash)
    return event


def forget_head_hint(chain: str) -> None:
    """After an append whose result is unknown: the next one takes the lock and re-reads the head."""
    _head_hints.pop(chain, None)


def _remember_head(chain: str, seq: int, digest: str) -> None:
    _bounded_put(_head_hints, chain, (seq, digest))


def _bounded_put(table: dict[str, Any], chain: str, value: Any) -> None:
    if len(table) >= HEAD_HINTS_MAX and chain not in table:
        table.clear()  # rare (100k chains in one process); costs one locking append per chain
    table[chain] = value


def audit_admin(
    *, by: Actor, operation: str, agent: Any = None, target: str = "", reason: str = "", details: dict | None = None
) -> AuditEvent:
    """Record an admin action (approve, suspend, policy edit, …) on the admin chain."""
    return audit_record(
        kind=AuditKind.ADMIN,
        actor=by,
        agent=agent,
        action=operation,
        resource=target,
        reason=reason,
        details=details,
    )


def audit_truncate(*, before: datetime, by: Actor = SYSTEM) -> dict[str, int]:
    """Delete whole ranges of events older than `before`, leaving a signed checkpoint per chain.

    The only path allowed to delete audit rows. For each chain:
    1. Lock its head, so no append interleaves.
    2. Find the newest event older than `before` (#K); delete #1..#K with the trigger's
       retention window open.
    3. Insert a checkpoint "truncated up to #K, whose hash was H", signed, so verification of the
       remaining chain starts from H.
    Then one admin event records the run. Returns {chain: events deleted}.
    """
    deleted: dict[str, int] = {}
    chains = list(AuditChainHead.objects.values_list("chain", flat=True))
    for chain in chains:
        with transaction.atomic():
            _lock_head(chain)
            last_old = (
                AuditEvent.objects.filter(chain=chain, timestamp__lt=before)
                .order_by("-seq")
                .values_list("seq", "event_hash")
                .first()
            )
            if last_old is None:
                continue
            up_to_seq, up_to_hash = last_old
            with retention_delete_window():
                count, _ = AuditEvent.objects.filter(chain=chain, seq__lte=up_to_seq).delete()
            if count == 0:
                continue
            AuditCheckpoint.objects.create(
                chain=chain,
                up_to_seq=up_to_seq,
                up_to_hash=up_to_hash,
                deleted=count,
                created_by=by.label,
                signature=checkpoint_signature(chain, up_to_seq, up_to_hash),
            )
            deleted[chain] = count
    if deleted:
        audit_admin(
            by=by,
            operation="audit.truncate",
            target=f"before {before.isoformat()}",
            details={"deleted": deleted, "before": before.isoformat()},
        )
    return deleted
