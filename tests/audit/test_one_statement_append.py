"""The durable append outside a transaction (the tool-call path): one autocommit statement on
PostgreSQL, guided by a per-process hint of the chain head. A stale or wrong hint, or another
writer on the same chain, must cost a retry and never a broken chain."""

import itertools
import threading

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audit import services
from audit.models import GENESIS_HASH, AuditChainHead, AuditEvent
from audit.services import audit_record
from audit.verify import audit_verify
from tests.conftest import TEST_ACTOR
from tests.factories import AgentFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh_process_state():
    """Hints and contention marks are per process; ids (and so chains) can repeat across tests."""
    services._head_hints.clear()
    services._contended_until.clear()


def durable(agent, **kwargs):
    return audit_record(kind="decision", actor=TEST_ACTOR, agent=agent, durable=True, tool="echo", **kwargs)


def assert_chain_intact(agent, count):
    events = list(AuditEvent.objects.filter(chain=f"agent:{agent.pk}").order_by("seq"))
    assert [e.seq for e in events] == list(range(1, count + 1))
    assert events[0].previous_hash == GENESIS_HASH
    assert all(later.previous_hash == earlier.event_hash for earlier, later in itertools.pairwise(events))
    head = AuditChainHead.objects.get(chain=f"agent:{agent.pk}")
    assert (head.seq, head.last_hash) == (count, events[-1].event_hash)
    assert audit_verify(agent_id=agent.pk).ok


def test_durable_appends_chain_and_return_what_was_stored():
    agent = AgentFactory()
    events = [durable(agent, decision="allow", arguments={"n": n}) for n in range(5)]
    assert_chain_intact(agent, 5)
    stored = AuditEvent.objects.get(pk=events[-1].pk)
    assert (stored.seq, stored.event_hash, stored.arguments) == (5, events[-1].event_hash, {"n": 4})


@pytest.mark.postgres
def test_a_steady_state_append_is_one_statement_on_postgresql():
    agent = AgentFactory()
    durable(agent)  # the chain's first event: the locking append, which leaves the hint
    with CaptureQueriesContext(connection) as queries:
        durable(agent)
    assert len(queries) == 1, [q["sql"][:80] for q in queries]
    assert_chain_intact(agent, 2)


def test_another_writer_in_between_costs_a_retry_not_a_broken_chain():
    agent = AgentFactory()
    durable(agent)
    # Another process appends: here the locking path inside a transaction, which leaves this
    # process's hint one event behind.
    from django.db import transaction

    with transaction.atomic():
        audit_record(kind="decision", actor=TEST_ACTOR, agent=agent, tool="elsewhere")
    durable(agent)
    assert_chain_intact(agent, 3)


@pytest.mark.parametrize(
    "hint",
    [
        (1, "f" * 64),  # the right seq with another hash (a forged or corrupted hint)
        (7, GENESIS_HASH),  # ahead of the head
        (0, GENESIS_HASH),  # behind it by two
    ],
)
def test_a_wrong_hint_never_lands_an_event(hint):
    agent = AgentFactory()
    durable(agent)
    durable(agent)
    services._head_hints[f"agent:{agent.pk}"] = hint
    durable(agent)
    assert_chain_intact(agent, 3)


def test_a_hint_for_a_chain_whose_head_is_gone_falls_back_to_creating_it():
    agent = AgentFactory()
    services._head_hints[f"agent:{agent.pk}"] = (3, "a" * 64)  # e.g. left over from a wiped database
    event = durable(agent)
    assert (event.seq, event.previous_hash) == (1, GENESIS_HASH)
    assert_chain_intact(agent, 1)


@pytest.mark.postgres
def test_concurrent_writers_on_one_chain_keep_it_intact():
    agent = AgentFactory()
    errors: list[Exception] = []

    def write(n):
        try:
            for i in range(15):
                durable(agent, arguments={"writer": n, "i": i})
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert_chain_intact(agent, 90)
    timestamps = list(AuditEvent.objects.filter(chain=f"agent:{agent.pk}").order_by("seq").values_list("timestamp"))
    assert timestamps == sorted(timestamps)  # time still runs forward along the chain


@pytest.mark.postgres
def test_a_chain_that_just_missed_takes_the_lock_for_a_while(monkeypatch):
    """Under contention an optimistic attempt mostly waits for the row lock and then misses, so
    after a miss the chain's appends lock directly for CONTENDED_SECONDS."""
    agent = AgentFactory()
    chain = f"agent:{agent.pk}"
    durable(agent)
    durable(agent)
    services._head_hints[chain] = (1, "f" * 64)  # as if another process had appended
    durable(agent)  # misses, then locks
    with CaptureQueriesContext(connection) as locked:
        durable(agent)
    later = services.time.monotonic() + services.CONTENDED_SECONDS + 0.1
    monkeypatch.setattr(services.time, "monotonic", lambda: later)
    with CaptureQueriesContext(connection) as optimistic:
        durable(agent)
    assert len(locked) > 1  # the claim, then the insert
    assert len(optimistic) == 1
    assert_chain_intact(agent, 5)
