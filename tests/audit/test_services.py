import pytest

from audit.chain import HASHED_FIELDS, event_hash, finding_hash
from audit.models import GENESIS_HASH, AuditChainHead, AuditEvent
from audit.services import AuditWriteError, audit_admin, audit_record
from tests.conftest import TEST_ACTOR
from tests.factories import AgentFactory

pytestmark = pytest.mark.django_db


def record(agent, **kwargs):
    return audit_record(kind="decision", actor=TEST_ACTOR, agent=agent, **kwargs)


def test_it_chains_events_per_agent_from_the_genesis_hash():
    a, b = AgentFactory(), AgentFactory()
    first = record(a, tool="read_file", decision="allow")
    second = record(a, tool="read_file", decision="deny")
    other = record(b, tool="x")
    assert (first.chain, first.seq, first.previous_hash) == (f"agent:{a.pk}", 1, GENESIS_HASH)
    assert (second.seq, second.previous_hash) == (2, first.event_hash)
    assert (other.chain, other.seq, other.previous_hash) == (f"agent:{b.pk}", 1, GENESIS_HASH)
    head = AuditChainHead.objects.get(chain=f"agent:{a.pk}")
    assert (head.seq, head.last_hash) == (2, second.event_hash)


def test_the_stored_hash_is_sha256_of_canonical_fields_plus_previous_hash():
    event = record(AgentFactory(), tool="t", arguments={"b": 1, "a": [1.0, "x"]}, latency_ms=12.5)
    stored = AuditEvent.objects.values(*HASHED_FIELDS, "previous_hash", "event_hash").get(pk=event.pk)
    fields = {k: stored[k] for k in HASHED_FIELDS}
    assert event_hash(fields, stored["previous_hash"]) == stored["event_hash"]


def test_admin_events_go_on_the_admin_chain_and_name_the_actor():
    agent = AgentFactory()
    event = audit_admin(by=TEST_ACTOR, operation="agent.suspend", agent=agent, reason="runaway")
    assert (event.chain, event.kind, event.action) == ("admin", "admin", "agent.suspend")
    assert (event.agent_id, event.actor, event.reason) == (agent.pk, "system:tests", "runaway")


def test_it_stores_arguments_redacted_and_dlp_findings_as_salted_hashes():
    secret = "AKIAIOSFODNN7EXAMPLE"
    event = record(
        AgentFactory(),
        arguments={"path": "/etc/x", "password": "hunter2", "note": f"key is {secret}", "nested": {"api_key": "k"}},
        dlp_findings=[{"type": "aws_access_key", "value": secret, "severity": "critical"}],
    )
    stored = AuditEvent.objects.get(pk=event.pk)
    assert stored.arguments == {
        "path": "/etc/x",
        "password": "[redacted]",
        "note": "key is [redacted:aws_access_key]",
        "nested": {"api_key": "[redacted]"},
    }
    assert stored.dlp_findings == [{"type": "aws_access_key", "severity": "critical", "hash": finding_hash(secret)}]
    row = str(AuditEvent.objects.filter(pk=event.pk).values().get())
    assert secret not in row and "hunter2" not in row


def test_it_stores_text_postgres_cannot_hold_without_failing():
    event = record(AgentFactory(), tool="t\x00ool", arguments={"s": "nul\x00 and lone \ud800 surrogate"})
    stored = AuditEvent.objects.get(pk=event.pk)
    assert "\x00" not in stored.tool and "\x00" not in stored.arguments["s"]


def test_it_refuses_events_it_cannot_serialise_or_attribute():
    agent = AgentFactory()
    with pytest.raises(AuditWriteError):
        record(agent, latency_ms=float("nan"))
    with pytest.raises(AuditWriteError):
        audit_record(kind="decision", actor=TEST_ACTOR, agent=None)
    with pytest.raises(AuditWriteError):
        audit_record(kind="gossip", actor=TEST_ACTOR, agent=agent)
    assert not AuditEvent.objects.exists()


def test_a_durable_record_refuses_to_run_inside_another_transaction():
    from django.db import transaction

    agent = AgentFactory()
    with pytest.raises(RuntimeError), transaction.atomic():
        record(agent, durable=True)


def test_a_database_failure_raises_audit_write_error():
    from django.db import connection

    agent = AgentFactory()
    with connection.cursor() as cursor:  # a real failure: the table is gone (rolled back with the test)
        cursor.execute("ALTER TABLE audit_auditevent RENAME TO audit_auditevent_gone")
    with pytest.raises(AuditWriteError, match="audit write failed"):
        record(agent)
    assert AuditChainHead.objects.filter(seq__gt=0).count() == 0  # the head did not move


def test_an_admin_change_and_its_event_commit_together_or_not_at_all(monkeypatch):
    from agents.models import AgentStatus
    from agents.services import agent_suspend

    agent = AgentFactory()

    def failing_admin(**kwargs):
        raise AuditWriteError("audit down")

    monkeypatch.setattr("agents.services.audit_admin", failing_admin)
    with pytest.raises(AuditWriteError):
        agent_suspend(agent=agent, by=TEST_ACTOR)
    agent.refresh_from_db()
    assert agent.status == AgentStatus.ACTIVE  # if it cannot be recorded, it does not happen
