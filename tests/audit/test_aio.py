"""audit_record_async: the tool-call path's append from the event loop. On PostgreSQL the steady
state is one statement on the loop's own connection (behavry/pgpool.py); whatever goes wrong there
(another writer, a refused insert, a cancelled caller, a connection the server closed) must end in
an intact chain, and a failure must raise, never pass silently."""

import asyncio
import contextlib
import os
import socket
import threading
from datetime import UTC, datetime

import pytest
from asgiref.sync import sync_to_async
from django.db import connection, connections

from audit import services
from audit.aio import audit_record_async
from audit.models import AuditEvent
from audit.services import AuditWriteError, audit_record
from behavry import pgpool
from tests.audit.test_one_statement_append import _fresh_process_state, assert_chain_intact  # noqa: F401 - autouse
from tests.conftest import TEST_ACTOR
from tests.factories import AgentFactory

pytestmark = pytest.mark.django_db(transaction=True)


def event(agent, **kwargs):
    return {"kind": "decision", "actor": TEST_ACTOR, "agent": agent, "tool": "echo", **kwargs}


@sync_to_async
def in_thread(fn, *args, **kwargs):
    """ORM code from the async tests; its connection is closed after, or it would outlive the
    tests and keep the test database from being dropped."""
    try:
        return fn(*args, **kwargs)
    finally:
        connections.close_all()


async def test_concurrent_appends_on_one_chain_stay_in_order():
    agent = await in_thread(AgentFactory)
    ids = await asyncio.gather(*(audit_record_async(**event(agent, arguments={"n": n})) for n in range(40)))
    assert len(set(ids)) == 40
    await in_thread(assert_chain_intact, agent, 40)
    stored = await in_thread(lambda: AuditEvent.objects.get(pk=ids[7]))
    assert stored.arguments == {"n": 7}


@pytest.mark.postgres
async def test_the_steady_state_runs_on_the_loop_connection_not_a_thread(monkeypatch):
    agent = await in_thread(AgentFactory)
    await audit_record_async(**event(agent))  # first event: the locking append on a thread

    async def no_thread(*args, **kwargs):
        raise AssertionError("went to a database thread")

    monkeypatch.setattr("audit.aio.on_db_thread", no_thread)
    await audit_record_async(**event(agent))
    pool = pgpool.for_running_loop()
    (first,) = pool._idle
    for latency in (0.1, 1e20, 1 / 3, None, 7.0):  # floats go as text; the stored values must hash the same
        await audit_record_async(**event(agent, latency_ms=latency))
        # One loop turn while idle: asyncio's selector loop may still deliver the readable event it
        # collected before the answer was read. That is not the server talking.
        await asyncio.sleep(0)
    assert pool._idle == [first]  # one connection, reused: not dropped as stale after each statement
    await in_thread(assert_chain_intact, agent, 7)


async def test_a_synchronous_writer_in_between_costs_a_retry_not_a_broken_chain():
    agent = await in_thread(AgentFactory)
    await audit_record_async(**event(agent))
    await audit_record_async(**event(agent))
    await in_thread(audit_record, durable=True, **event(agent, tool="admin-side"))  # moves the head
    await audit_record_async(**event(agent))
    await audit_record_async(**event(agent))
    await in_thread(assert_chain_intact, agent, 5)


@pytest.mark.postgres
async def test_a_refused_insert_raises_and_the_next_append_recovers():
    agent = await in_thread(AgentFactory)
    await audit_record_async(**event(agent))
    await audit_record_async(**event(agent))  # the hint is known: next is the one statement
    await in_thread(refuse_audit_inserts, True)
    try:
        with pytest.raises(AuditWriteError, match="refused by test"):
            await audit_record_async(**event(agent))
    finally:
        await in_thread(refuse_audit_inserts, False)
    await audit_record_async(**event(agent))
    await in_thread(assert_chain_intact, agent, 3)


@pytest.mark.postgres
async def test_a_cancelled_append_leaves_the_chain_intact():
    """Cancelled while the statement waits on the head row: written or not is unknown to this
    process, so its hint is dropped and the next append re-reads the head."""
    agent = await in_thread(AgentFactory)
    await audit_record_async(**event(agent))
    await audit_record_async(**event(agent))
    async with head_locked_elsewhere(agent):
        task = asyncio.ensure_future(audit_record_async(**event(agent)))
        await asyncio.sleep(0.3)
        assert not task.done()  # waiting on the row lock
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert f"agent:{agent.pk}" not in services._head_hints
    assert pgpool.for_running_loop().size == 0  # its state unknown, the connection was dropped
    await audit_record_async(**event(agent))
    count = await in_thread(lambda: AuditEvent.objects.filter(agent_id=agent.pk).count())
    assert count in (3, 4)  # the cancelled one may or may not have been written
    await in_thread(assert_chain_intact, agent, count)


@pytest.mark.postgres
async def test_an_append_stuck_on_a_locked_head_times_out_and_is_cancelled(settings):
    """A chain head locked elsewhere (audit_truncate, a stuck transaction): the append fails after
    BEHAVRY_DECISION_TIMEOUT_SECONDS (the call is denied), and its statement is cancelled on the
    server, so it does not commit later when the lock goes."""
    settings.BEHAVRY_DECISION_TIMEOUT_SECONDS = 1
    agent = await in_thread(AgentFactory)
    await audit_record_async(**event(agent))
    await audit_record_async(**event(agent))
    async with head_locked_elsewhere(agent):
        with pytest.raises(AuditWriteError, match="TimeoutError"):
            await audit_record_async(**event(agent, tool="stuck"))
    await assert_stuck_append_left_out(agent, 3)


@pytest.mark.postgres
async def test_the_locking_append_on_a_thread_is_bounded_too(settings):
    """A chain whose head this process does not know takes the locking append on a database
    thread. With the head locked elsewhere it gives up after BEHAVRY_DECISION_TIMEOUT_SECONDS
    (lock_timeout on the server, a timeout on the hop here) instead of holding the call and the
    thread for as long as the lock lasts."""
    settings.BEHAVRY_DECISION_TIMEOUT_SECONDS = 1
    agent = await in_thread(AgentFactory)
    await audit_record_async(**event(agent))
    services.forget_head_hint(f"agent:{agent.pk}")  # as in a process that never wrote this chain
    async with head_locked_elsewhere(agent, hold=30):
        # the server's lock_timeout ends the wait (the statement fails there, so nothing commits
        # later), before the hop's own limit a second after
        with pytest.raises(AuditWriteError, match="lock timeout"):
            await audit_record_async(**event(agent, tool="stuck"))
    await assert_stuck_append_left_out(agent, 2)


async def assert_stuck_append_left_out(agent, count):
    """After a timed-out append: it never committed (not even later), and the chain goes on."""
    await audit_record_async(**event(agent))
    tools = await in_thread(lambda: list(AuditEvent.objects.filter(agent_id=agent.pk).values_list("tool", flat=True)))
    assert "stuck" not in tools and len(tools) == count
    await in_thread(assert_chain_intact, agent, count)


@pytest.mark.postgres
async def test_a_caller_cancelled_while_the_timed_out_statement_is_cancelled_frees_its_pool_slot(settings, monkeypatch):
    settings.BEHAVRY_DECISION_TIMEOUT_SECONDS = 1
    agent = await in_thread(AgentFactory)
    await audit_record_async(**event(agent))
    await audit_record_async(**event(agent))
    cancelling = asyncio.Event()

    async def slow_cancel(pooled):
        cancelling.set()
        await asyncio.sleep(30)

    monkeypatch.setattr("audit.aio._cancel_on_server", slow_cancel)
    async with head_locked_elsewhere(agent):
        task = asyncio.ensure_future(audit_record_async(**event(agent)))
        await asyncio.wait_for(cancelling.wait(), 10)  # timed out, now cancelling on the server
        task.cancel()  # the agent hangs up meanwhile
        with pytest.raises(asyncio.CancelledError):
            await task
    assert pgpool.for_running_loop().size == 0  # not leaked: dropped and its slot free


@pytest.mark.postgres
async def test_a_waiter_cancelled_as_it_is_handed_a_connection_passes_it_on():
    pool = pgpool.AsyncPgPool(pgpool.connection_params(), max_size=1, max_age=60)
    held = await pool.acquire()
    second = asyncio.ensure_future(pool.acquire())
    third = asyncio.ensure_future(pool.acquire())
    await asyncio.sleep(0.05)
    await pool.release(held)  # handed to `second`...
    second.cancel()  # ...which is cancelled before it runs
    assert await asyncio.wait_for(third, 5) is held
    await pool.release(held)
    await pool.close()


class _Text(str):
    pass


@pytest.mark.parametrize(
    "value", [True, "nul\x00inside", _Text("nul\x00inside"), datetime(2026, 1, 1), b"bytes", object()]
)
def test_statement_text_refuses_what_it_cannot_send_faithfully(value):
    with pytest.raises((TypeError, ValueError)):
        pgpool._text_value(value)


def test_statement_text_uses_the_plain_number_form():
    import enum

    class Level(enum.IntEnum):
        HIGH = 3

    assert pgpool._text_value(Level.HIGH) == b"3"
    assert pgpool._text_value(1e20) == b"1e+20" and pgpool._text_value(0.1) == b"0.1"
    assert pgpool._text_value(_Text("plain")) == b"plain" and pgpool._text_value(None) is None
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    assert pgpool._text_value(moment) == b"2026-01-01T00:00:00+00:00"


@pytest.mark.postgres
async def test_a_connection_the_server_closed_while_idle_is_not_reused():
    agent = await in_thread(AgentFactory)
    await audit_record_async(**event(agent))
    await audit_record_async(**event(agent))
    pool = pgpool.for_running_loop()
    (idle,) = pool._idle
    await in_thread(_terminate, idle.conn.pgconn.backend_pid)
    await asyncio.sleep(0.2)  # the server's goodbye reaches the socket
    assert idle.stale
    await audit_record_async(**event(agent))  # would fail (and deny a call) on the dead connection
    assert pool.size == 1 and pool._idle[0] is not idle and idle.conn.closed
    await in_thread(assert_chain_intact, agent, 3)


@pytest.mark.postgres
async def test_fetch_row_reports_server_errors_and_refuses_unknown_values():
    pool = pgpool.for_running_loop()
    pooled = await pool.acquire()
    assert await pooled.fetch_row(b"SELECT $1::int + 1, $2::text, $3::text", [41, "é", None]) == (
        b"42",
        "é".encode(),
        None,
    )
    with pytest.raises(pgpool.StatementError, match="division by zero"):
        await pooled.fetch_row(b"SELECT 1 / $1::int", [0])
    with pytest.raises(TypeError, match="bytes"):
        await pooled.fetch_row(b"SELECT $1::text", [b"raw"])
    # a statement larger than the socket buffer is flushed in parts
    big = "x" * 4_000_000
    assert await pooled.fetch_row(b"SELECT length($1::text)", [big]) == (b"4000000",)
    assert not pooled.stale  # the results read while busy did not count as idle chatter
    await pool.release(pooled)


@pytest.mark.postgres
async def test_the_append_is_prepared_once_per_connection_and_planned_generically():
    agent = await in_thread(AgentFactory)
    for _ in range(9):  # the first on a thread; then eight on the loop, one connection
        await audit_record_async(**event(agent))
    pool = pgpool.for_running_loop()
    (pooled,) = pool._idle
    assert pooled._prepared == {b"behavry_audit_append"}
    sql = b"SELECT count(*), max(generic_plans), max(custom_plans) FROM pg_prepared_statements WHERE name = $1"
    # prepared once; planned for the first five runs (PostgreSQL's default), then the generic plan
    assert await pooled.fetch_row(sql, ["behavry_audit_append"]) == (b"1", b"3", b"5")
    await in_thread(assert_chain_intact, agent, 9)


@pytest.mark.postgres
async def test_a_prepared_statement_the_server_lost_turns_preparing_off_without_losing_the_event(caplog):
    """As behind a pooler in transaction mode, where the next EXECUTE may reach a backend that
    never saw the PREPARE: the append runs once more unnamed, and the pool stops naming."""
    agent = await in_thread(AgentFactory)
    for _ in range(3):
        await audit_record_async(**event(agent))
    pool = pgpool.for_running_loop()
    (pooled,) = pool._idle
    await pooled.fetch_row(b"DEALLOCATE behavry_audit_append", [])  # behind the pool's back
    await audit_record_async(**event(agent, tool="after"))
    assert not pool.prepared and pool._idle == [pooled]  # the same connection, still usable
    assert "lost a prepared statement" in caplog.text
    await audit_record_async(**event(agent))
    await in_thread(assert_chain_intact, agent, 5)


@pytest.mark.postgres
async def test_prepared_statements_can_be_turned_off_for_a_transaction_pooler(settings):
    settings.BEHAVRY_DB_PREPARED_STATEMENTS = False
    agent = await in_thread(AgentFactory)
    for _ in range(3):
        await audit_record_async(**event(agent))
    pool = pgpool.for_running_loop()
    (pooled,) = pool._idle
    assert not pool.prepared and not pooled._prepared
    assert await pooled.fetch_row(b"SELECT count(*) FROM pg_prepared_statements", []) == (b"0",)
    await in_thread(assert_chain_intact, agent, 3)


@pytest.mark.postgres
async def test_a_statement_that_cannot_be_prepared_fails_and_is_not_marked_prepared():
    pool = pgpool.for_running_loop()
    pooled = await pool.acquire()
    with pytest.raises(pgpool.StatementError, match="no_such_table"):
        await pooled.fetch_row(b"SELECT * FROM no_such_table WHERE id = $1", [1], name=b"bad")
    assert pooled._prepared == set()
    on_wire = asyncio.get_running_loop().create_future()
    assert await pooled.fetch_row(b"SELECT $1::int * 2", [21], name=b"double", on_wire=on_wire) == (b"42",)
    assert on_wire.done() and pooled._prepared == {b"double"}
    assert await pooled.fetch_row(b"ignored once prepared", [4], name=b"double") == (b"8",)
    await pool.release(pooled)


@pytest.mark.postgres
async def test_an_event_on_the_wire_commits_even_if_this_process_dies_before_the_answer():
    """What the proxy relies on to answer before an outcome's commit (handlers.answer_after_outcome):
    once on_wire is resolved, PostgreSQL has the statement and runs it without this process."""
    agent = await in_thread(AgentFactory)
    await audit_record_async(**event(agent))  # the chain's first event: now its head is known here
    await in_thread(audit_insert_trigger, when="NEW.tool = 'slow'", pg="PERFORM pg_sleep(0.5)")
    try:
        on_wire = asyncio.get_running_loop().create_future()
        append = asyncio.ensure_future(audit_record_async(on_wire=on_wire, **event(agent, tool="slow")))
        await asyncio.wait_for(on_wire, 5)
        assert not append.done()  # the server is still in the trigger's sleep
        pool = pgpool.for_running_loop()
        (in_use,) = pool._opened - set(pool._idle)
        # This process's end of the connection goes as when the process dies: the kernel closes
        # the socket (no goodbye message from libpq).
        socket.socket(fileno=os.dup(in_use.conn.pgconn.socket)).shutdown(socket.SHUT_RDWR)
        with pytest.raises(AuditWriteError):
            await append
        for _ in range(100):
            if await in_thread(lambda: AuditEvent.objects.filter(agent_id=agent.pk, tool="slow").exists()):
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the event whose statement was on the wire never committed")
    finally:
        await in_thread(drop_audit_insert_trigger)
    await in_thread(assert_chain_intact, agent, 2)


@pytest.mark.postgres
async def test_the_pool_waits_at_its_limit_instead_of_opening_more():
    pool = pgpool.AsyncPgPool(pgpool.connection_params(), max_size=2, max_age=60)
    first, second = await pool.acquire(), await pool.acquire()
    third = asyncio.ensure_future(pool.acquire())
    await asyncio.sleep(0.1)
    assert not third.done() and pool.size == 2
    await pool.release(first)
    assert await asyncio.wait_for(third, 5) is first
    await pool.release(second, broken=True)  # closed, its slot freed
    assert pool.size == 1
    await pool.release(first)
    await pool.close()
    assert pool.size == 0


@pytest.mark.postgres
async def test_connections_older_than_the_max_age_are_replaced():
    pool = pgpool.AsyncPgPool(pgpool.connection_params(), max_size=2, max_age=0)
    conn = await pool.acquire()
    await pool.release(conn)
    again = await pool.acquire()
    assert again is not conn and conn.conn.closed
    await pool.release(again)
    await pool.close()


# --- group commit: appends queued behind one in flight ---------------------------------------------


@contextlib.asynccontextmanager
async def queued_behind_a_blocked_append(agent, tools, *, hold: float = 10):
    """One append of `agent` in flight and blocked on its head row (locked elsewhere), and one
    more append per name in `tools` queued behind it, in that order. Yields the queued tasks; the
    lock goes when the block ends."""
    await audit_record_async(**event(agent))
    await audit_record_async(**event(agent))  # the hint is known: the one-statement path
    async with head_locked_elsewhere(agent, hold):
        first = asyncio.ensure_future(audit_record_async(**event(agent, tool="first")))
        await asyncio.sleep(0.2)
        assert not first.done()  # in flight, waiting on the row lock
        queued = []
        for tool in tools:
            queued.append(asyncio.ensure_future(audit_record_async(**event(agent, tool=tool))))
            await asyncio.sleep(0)  # queued in this order
        await asyncio.sleep(0.05)
        assert not any(task.done() for task in queued)
        yield queued
    await first


def batch_sizes(monkeypatch) -> list[int]:
    from audit import aio

    sizes: list[int] = []
    real = aio.batch_append

    def counting(chain, hint, events):
        sizes.append(len(events))
        return real(chain, hint, events)

    monkeypatch.setattr(aio, "batch_append", counting)
    return sizes


def stored_in_chain_order(agent) -> list[tuple[int, str, str]]:
    """(id, tool, xmin) per event: xmin is the inserting transaction."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id, tool, xmin::text FROM audit_auditevent WHERE chain = %s ORDER BY seq", [f"agent:{agent.pk}"]
        )
        rows = cursor.fetchall()
    connections.close_all()
    return rows


@pytest.mark.postgres
async def test_appends_queued_behind_one_in_flight_commit_together_in_their_order(monkeypatch):
    agent = await in_thread(AgentFactory)
    sizes = batch_sizes(monkeypatch)
    tools = [f"queued-{n}" for n in range(10)]
    async with queued_behind_a_blocked_append(agent, tools) as queued:
        pass
    ids = await asyncio.gather(*queued)
    assert sizes == [10]  # one statement for the ten
    rows = await in_thread(stored_in_chain_order, agent)
    assert [tool for _id, tool, _xmin in rows] == ["echo", "echo", "first", *tools]
    assert [row[0] for row in rows[3:]] == ids  # each caller got its own event's id
    assert len({xmin for _id, _tool, xmin in rows[3:]}) == 1  # one transaction, one commit
    await in_thread(assert_chain_intact, agent, 13)
    await audit_record_async(**event(agent))  # and the chain goes on from the batch's head
    await in_thread(assert_chain_intact, agent, 14)


@pytest.mark.postgres
async def test_a_batch_holds_at_most_batch_max_and_the_rest_follow(monkeypatch):
    from audit.aio import BATCH_MAX

    agent = await in_thread(AgentFactory)
    sizes = batch_sizes(monkeypatch)
    async with queued_behind_a_blocked_append(agent, [f"q{n}" for n in range(BATCH_MAX + 3)]) as queued:
        pass
    await asyncio.gather(*queued)
    assert sizes == [BATCH_MAX, 3]
    await in_thread(assert_chain_intact, agent, 3 + BATCH_MAX + 3)


@pytest.mark.postgres
async def test_an_append_cancelled_while_queued_is_not_written_and_the_others_are(monkeypatch):
    agent = await in_thread(AgentFactory)
    async with queued_behind_a_blocked_append(agent, ["a", "gone", "b"]) as (a, gone, b):
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
    assert await a and await b
    rows = await in_thread(stored_in_chain_order, agent)
    assert [tool for _id, tool, _xmin in rows] == ["echo", "echo", "first", "a", "b"]
    await in_thread(assert_chain_intact, agent, 5)


@pytest.mark.postgres
async def test_cancelling_the_caller_that_writes_a_batch_fails_none_of_it(monkeypatch):
    """The first queued caller writes the batch. An agent hanging up on that call must not fail,
    or leave unknown, the events of the calls that queued behind it: the batch runs on."""
    from audit import aio

    agent = await in_thread(AgentFactory)
    writing = asyncio.Event()
    real = aio._execute_on_loop

    async def slow_batches(pool, chain, sql, name, params, on_wire, timeout):
        if name != aio._STATEMENT_NAME:  # a batch
            writing.set()
            await asyncio.sleep(0.3)
        return await real(pool, chain, sql, name, params, on_wire, timeout)

    monkeypatch.setattr(aio, "_execute_on_loop", slow_batches)
    async with queued_behind_a_blocked_append(agent, ["leader", "b", "c"]) as (leader, b, c):
        pass
    await asyncio.wait_for(writing.wait(), 10)
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert isinstance(await b, int) and isinstance(await c, int)
    rows = await in_thread(stored_in_chain_order, agent)
    assert [tool for _id, tool, _xmin in rows] == ["echo", "echo", "first", "leader", "b", "c"]
    await audit_record_async(**event(agent))  # the chain was handed on once the batch finished
    await in_thread(assert_chain_intact, agent, 7)


@pytest.mark.postgres
async def test_a_refused_batch_fails_each_of_its_events_and_the_chain_recovers():
    agent = await in_thread(AgentFactory)
    await in_thread(audit_insert_trigger, when="NEW.tool IN ('x', 'y')", pg="RAISE EXCEPTION 'refused by test'")
    try:
        async with queued_behind_a_blocked_append(agent, ["x", "y"]) as queued:
            pass
        results = await asyncio.gather(*queued, return_exceptions=True)
    finally:
        await in_thread(drop_audit_insert_trigger)
    assert all(isinstance(result, AuditWriteError) and "refused by test" in str(result) for result in results)
    await audit_record_async(**event(agent))
    await in_thread(assert_chain_intact, agent, 4)  # two, "first", and the one after: none of x, y


@pytest.mark.postgres
async def test_an_event_the_server_refuses_for_its_values_fails_alone_not_its_batch():
    """One event a constraint refuses (SQLSTATE 23514 here) sinks the batch statement; its
    neighbours are then written one by one, and only it fails."""
    agent = await in_thread(AgentFactory)
    await in_thread(
        audit_insert_trigger,
        when="NEW.tool = 'poison'",
        pg="RAISE EXCEPTION 'refused by test' USING ERRCODE = 'check_violation'",
    )
    try:
        async with queued_behind_a_blocked_append(agent, ["a", "poison", "b"]) as queued:
            pass
        a, poison, b = await asyncio.gather(*queued, return_exceptions=True)
    finally:
        await in_thread(drop_audit_insert_trigger)
    assert isinstance(a, int) and isinstance(b, int)
    assert isinstance(poison, AuditWriteError) and "refused by test" in str(poison)
    rows = await in_thread(stored_in_chain_order, agent)
    assert [tool for _id, tool, _xmin in rows] == ["echo", "echo", "first", "a", "b"]
    await in_thread(assert_chain_intact, agent, 5)


@pytest.mark.postgres
async def test_appends_with_different_timeouts_do_not_share_a_batch(monkeypatch):
    """A batch has one timeout. An outcome (60 s) batched with a decision (its 5 s) would be
    cancelled at the decision's limit, after its answer had gone out; so a batch takes only the run
    of queued appends that share the first one's timeout, in order."""
    agent = await in_thread(AgentFactory)
    sizes = batch_sizes(monkeypatch)
    await audit_record_async(**event(agent))
    await audit_record_async(**event(agent))
    async with head_locked_elsewhere(agent):
        first = asyncio.ensure_future(audit_record_async(**event(agent, tool="first")))
        await asyncio.sleep(0.2)
        queued = []
        for tool, timeout in (("d1", 5), ("d2", 5), ("o1", 60), ("o2", 60), ("d3", 5)):
            queued.append(asyncio.ensure_future(audit_record_async(timeout=timeout, **event(agent, tool=tool))))
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
    await first
    await asyncio.gather(*queued)
    assert sizes == [2, 2]  # (d1, d2), (o1, o2); d3 alone
    rows = await in_thread(stored_in_chain_order, agent)
    assert [tool for _id, tool, _xmin in rows][3:] == ["d1", "d2", "o1", "o2", "d3"]
    await in_thread(assert_chain_intact, agent, 8)


@pytest.mark.postgres
async def test_when_a_batch_goes_event_by_event_each_caller_hears_as_soon_as_its_own_is_written():
    """The refused batch below is written event by event; the caller of a fast event is answered
    when its event is written, not after the slow ones behind it."""
    agent = await in_thread(AgentFactory)
    await in_thread(
        audit_insert_trigger,
        when="NEW.tool IN ('poison', 'slow')",
        pg="IF NEW.tool = 'poison' THEN RAISE EXCEPTION 'refused by test' USING ERRCODE = 'check_violation';"
        " END IF; PERFORM pg_sleep(0.5)",
    )
    try:
        async with queued_behind_a_blocked_append(agent, ["poison", "fast", "slow", "slow"]) as queued:
            pass
        poison, fast, *slow = queued
        assert isinstance(await fast, int)
        written = [tool for _id, tool, _xmin in await in_thread(stored_in_chain_order, agent)]
        assert written.count("slow") < 2  # answered while the slow ones were still being written
        await asyncio.gather(*slow)
        with pytest.raises(AuditWriteError, match="refused by test"):
            await poison
    finally:
        await in_thread(drop_audit_insert_trigger)
    await in_thread(assert_chain_intact, agent, 6)


async def test_a_batch_on_a_chain_another_writer_moved_falls_back_to_one_locking_append_each(monkeypatch):
    """The hint is stale (another process wrote): the batch statement inserts nothing and each of
    its events goes through the locking append, in order. Both backends: on SQLite every append
    is the locking one, queued on its database thread."""
    agent = await in_thread(AgentFactory)
    await audit_record_async(**event(agent))
    await audit_record_async(**event(agent))
    services._head_hints[f"agent:{agent.pk}"] = (2, "0" * 64)  # as if another process had appended
    tasks = [asyncio.ensure_future(audit_record_async(**event(agent, tool=f"t{n}"))) for n in range(6)]
    ids = await asyncio.gather(*tasks)
    rows = await in_thread(stored_in_chain_order_any, agent)
    assert rows[2:] == [f"t{n}" for n in range(6)]
    assert len(set(ids)) == 6
    await in_thread(assert_chain_intact, agent, 8)


def stored_in_chain_order_any(agent) -> list[str]:
    return list(AuditEvent.objects.filter(chain=f"agent:{agent.pk}").order_by("seq").values_list("tool", flat=True))


def refuse_audit_inserts(on: bool) -> None:
    """A real failure of the audit write: the database refuses every new event (both backends)."""
    if on:
        audit_insert_trigger(pg="RAISE EXCEPTION 'refused by test'", sqlite="SELECT RAISE(ABORT, 'refused by test')")
    else:
        drop_audit_insert_trigger()


def audit_insert_trigger(*, when: str = "TRUE", pg: str = "", sqlite: str = "") -> None:
    """A trigger run before each audit insert for which `when` (a condition on NEW, the same SQL on
    both backends) holds: `pg` is its PL/pgSQL, `sqlite` its statement. A backend given none is
    left alone."""
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite" and sqlite:
            cursor.execute(
                f"CREATE TRIGGER test_audit BEFORE INSERT ON audit_auditevent WHEN {when} BEGIN {sqlite}; END"
            )
        elif connection.vendor == "postgresql" and pg:
            cursor.execute(
                "CREATE FUNCTION test_audit() RETURNS trigger LANGUAGE plpgsql AS"
                f" $$BEGIN IF {when} THEN {pg}; END IF; RETURN NEW; END$$"
            )
            cursor.execute(
                "CREATE TRIGGER test_audit BEFORE INSERT ON audit_auditevent FOR EACH ROW EXECUTE FUNCTION test_audit()"
            )


def drop_audit_insert_trigger() -> None:
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("DROP TRIGGER IF EXISTS test_audit")
        else:
            cursor.execute("DROP TRIGGER IF EXISTS test_audit ON audit_auditevent")
            cursor.execute("DROP FUNCTION IF EXISTS test_audit()")


@contextlib.asynccontextmanager
async def head_locked_elsewhere(agent, hold: float = 10):
    """The agent's chain head row locked by another connection's open transaction, until the block
    ends or `hold` seconds pass."""
    locked, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_head_lock, args=(f"agent:{agent.pk}", locked, release, hold))
    holder.start()
    try:
        assert await asyncio.to_thread(locked.wait, 10)
        yield
    finally:
        release.set()
        await asyncio.to_thread(holder.join, hold)


def _hold_head_lock(chain: str, locked: threading.Event, release: threading.Event, hold: float) -> None:
    conn = connections.create_connection("default")
    try:
        conn.set_autocommit(False)
        with conn.cursor() as cursor:
            cursor.execute("SELECT seq FROM audit_auditchainhead WHERE chain = %s FOR UPDATE", [chain])
            locked.set()
            release.wait(hold)
        conn.rollback()
    finally:
        conn.close()


def _terminate(pid: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
