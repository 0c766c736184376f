"""The database itself refuses to change or delete audit rows; retention is the one way out."""

from datetime import timedelta

import pytest
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from audit.models import AuditCheckpoint, AuditEvent
from audit.services import audit_record, audit_truncate
from audit.tasks import apply_retention
from audit.verify import audit_verify
from tests.audit.tamper import tamper
from tests.conftest import TEST_ACTOR
from tests.factories import AgentFactory

pytestmark = pytest.mark.django_db


def make_events(agent, n):
    return [audit_record(kind="decision", actor=TEST_ACTOR, agent=agent, tool=f"t{i}") for i in range(n)]


def raw(sql, params):
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)


def test_a_raw_sql_update_is_refused():
    (event,) = make_events(AgentFactory(), 1)
    with pytest.raises(DatabaseError, match="append-only"):
        raw("UPDATE audit_auditevent SET decision = 'allow' WHERE id = %s", [event.id])
    assert AuditEvent.objects.get(pk=event.pk).decision == ""


@pytest.mark.postgres
def test_a_raw_sql_delete_is_refused_on_postgres():
    (event,) = make_events(AgentFactory(), 1)
    with pytest.raises(DatabaseError, match="append-only"):
        raw("DELETE FROM audit_auditevent WHERE id = %s", [event.id])
    assert AuditEvent.objects.filter(pk=event.pk).exists()


@pytest.mark.postgres
def test_the_orm_cannot_update_or_delete_either():
    (event,) = make_events(AgentFactory(), 1)
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).update(tool="x")
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).delete()


@pytest.mark.postgres
def test_checkpoints_are_append_only_too():
    agent = AgentFactory()
    events = make_events(agent, 2)
    tamper(
        "UPDATE audit_auditevent SET timestamp = %s WHERE id = %s", [timezone.now() - timedelta(days=400), events[0].id]
    )
    audit_truncate(before=timezone.now() - timedelta(days=365), by=TEST_ACTOR)
    with pytest.raises(DatabaseError, match="append-only"):
        raw("UPDATE audit_auditcheckpoint SET up_to_seq = 0", [])


def _age(events, days):
    for event in events:
        tamper(
            "UPDATE audit_auditevent SET timestamp = %s WHERE id = %s",
            [timezone.now() - timedelta(days=days), event.id],
        )


def test_retention_deletes_old_ranges_and_verification_still_passes():
    agent, other = AgentFactory(), AgentFactory()
    events = make_events(agent, 6)
    young = make_events(other, 2)
    _age(events[:4], 400)  # tampering, but only with rows retention is about to delete
    deleted = audit_truncate(before=timezone.now() - timedelta(days=365), by=TEST_ACTOR)
    assert deleted == {f"agent:{agent.pk}": 4}
    assert list(AuditEvent.objects.filter(chain=f"agent:{agent.pk}").values_list("seq", flat=True).order_by("seq")) == [
        5,
        6,
    ]
    checkpoint = AuditCheckpoint.objects.get(chain=f"agent:{agent.pk}")
    assert (checkpoint.up_to_seq, checkpoint.up_to_hash, checkpoint.deleted) == (4, events[3].event_hash, 4)
    result = audit_verify()
    assert result.ok, result.first_broken
    assert result.checkpoints == {f"agent:{agent.pk}": 4}
    assert AuditEvent.objects.filter(chain=f"agent:{other.pk}").count() == len(young)
    marker = AuditEvent.objects.get(action="audit.truncate")
    assert marker.chain == "admin" and marker.details["deleted"] == {f"agent:{agent.pk}": 4}


def test_a_forged_checkpoint_is_detected():
    agent = AgentFactory()
    events = make_events(agent, 3)
    _age(events[:1], 400)
    audit_truncate(before=timezone.now() - timedelta(days=365), by=TEST_ACTOR)
    tamper("UPDATE audit_auditcheckpoint SET up_to_seq = 2 WHERE chain = %s", [f"agent:{agent.pk}"])
    assert "checkpoint signature is invalid" in audit_verify().first_broken.reason


def test_the_beat_task_applies_the_configured_retention(settings):
    settings.BEHAVRY_AUDIT_RETENTION_DAYS = 30
    agent = AgentFactory()
    events = make_events(agent, 3)
    _age(events[:2], 31)
    assert apply_retention() == {f"agent:{agent.pk}": 2}
    assert apply_retention() == {}  # nothing left to do: a second overlapping run is harmless
