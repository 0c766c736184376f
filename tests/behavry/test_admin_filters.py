"""Admin changelists on big tables: no whole-table SELECT DISTINCT, filters that only take offered
values, the approver's queue order, and an agent picker that does not list every agent."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from agents.models import AgentToken
from audit.models import AuditEvent
from audit.services import audit_record
from behavry.actors import Actor
from escalations.models import Escalation
from escalations.services import escalation_deny
from policies.models import PolicyException
from tests.conftest import TEST_ACTOR
from tests.escalations.helpers import open_escalation
from tests.factories import AgentFactory, UpstreamServerFactory

pytestmark = pytest.mark.django_db

BIG_TABLES = [AuditEvent, Escalation, PolicyException, AgentToken]


def changelist(model) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")


def _call(agent, *, server: str, decision: str, tool: str = "read_file") -> AuditEvent:
    return audit_record(
        kind="decision",
        actor=Actor("agent", str(agent.pk), agent.name),
        agent=agent,
        server=server,
        tool=tool,
        decision=decision,
        policy_id="test.rule",
    )


@pytest.fixture
def clock(monkeypatch):
    """`timezone.now` frozen for audit_record's timestamps; move it by assigning `clock.now`."""

    class Clock:
        now = timezone.now()

    frozen = Clock()
    monkeypatch.setattr(timezone, "now", lambda: frozen.now)
    return frozen


def _listed_ids(response) -> list[int]:
    return [obj.pk for obj in response.context["cl"].result_list]


@pytest.mark.parametrize("model", BIG_TABLES, ids=lambda m: m.__name__)
def test_a_changelist_never_scans_for_distinct_values(client, admin_user, model):
    client.force_login(admin_user)
    with CaptureQueriesContext(connection) as queries:
        assert client.get(changelist(model)).status_code == 200
    assert not [q["sql"] for q in queries.captured_queries if "DISTINCT" in q["sql"].upper()]


def test_audit_filters_by_decision_server_and_recency(client, admin_user, clock):
    UpstreamServerFactory(slug="fs")
    UpstreamServerFactory(slug="mail")
    agent = AgentFactory()
    today = clock.now
    clock.now = today - timedelta(days=3)
    old_deny = _call(agent, server="fs", decision="deny")
    clock.now = today
    deny_fs = _call(agent, server="fs", decision="deny")
    _call(agent, server="fs", decision="allow")
    _call(agent, server="mail", decision="deny")
    client.force_login(admin_user)

    page = client.get(changelist(AuditEvent), {"decision": "deny", "server": "fs"})
    recent = client.get(changelist(AuditEvent), {"decision": "deny", "server": "fs", "timestamp_within": "24h"})

    assert _listed_ids(page) == [deny_fs.pk, old_deny.pk]
    assert _listed_ids(recent) == [deny_fs.pk]
    assert b"server=mail" in page.content  # servers are offered from UpstreamServer


@pytest.mark.parametrize("param", ["decision", "server", "timestamp_within"])
@pytest.mark.parametrize("value", ["\x00", "nonsense", "x" * 5000])
def test_a_value_the_filter_does_not_offer_filters_nothing(client, admin_user, param, value):
    # A NUL reaching PostgreSQL would be a driver error; an unknown value is simply not applied.
    agent = AgentFactory()
    _call(agent, server="fs", decision="allow")
    client.force_login(admin_user)

    response = client.get(changelist(AuditEvent), {param: value})

    assert response.status_code == 200
    assert len(_listed_ids(response)) == AuditEvent.objects.count()


def test_escalations_list_pending_first_then_newest(client, approver_user):
    agent = AgentFactory()
    start = timezone.now()
    made = []
    for i in range(4):
        made.append(open_escalation(agent, tool=f"tool_{i}", request_id=f"r{i}"))
        Escalation.objects.filter(pk=made[-1].pk).update(created_at=start + timedelta(minutes=i))
    escalation_deny(escalation=made[3], by=TEST_ACTOR, note="no")  # the newest, but decided
    escalation_deny(escalation=made[0], by=TEST_ACTOR, note="no")
    client.force_login(approver_user)

    response = client.get(changelist(Escalation))

    assert _listed_ids(response) == [made[2].pk, made[1].pk, made[3].pk, made[0].pk]


def test_the_token_add_form_picks_the_agent_by_search_not_from_a_full_list(client, admin_user):
    agents = [AgentFactory(name=f"picker-{i:02d}") for i in range(30)]
    client.force_login(admin_user)

    form = client.get(reverse("admin:agents_agenttoken_add"))
    found = client.get(
        reverse("admin:autocomplete"),
        {"app_label": "agents", "model_name": "agenttoken", "field_name": "agent", "term": "picker-2"},
    )

    assert form.status_code == 200
    assert b"admin-autocomplete" in form.content
    assert not [a.name for a in agents if a.name.encode() in form.content]
    assert sorted(r["text"] for r in found.json()["results"]) == [f"picker-{i}" for i in range(20, 30)]
