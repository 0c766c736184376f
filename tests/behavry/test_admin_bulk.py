"""Every bulk action in Django admin, run through the real changelist POST: it changes the selected
rows (and only those), writes one audit event per changed row naming the person, and refuses
people without the role. Changelists keep a fixed number of queries as rows grow."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.models import ApiKey
from accounts.services import api_key_create
from agents.models import Agent, AgentStatus, AgentToken
from agents.services import agent_suspend, agent_token_issue
from alerts.models import Alert
from audit.models import AuditEvent
from escalations.models import Escalation
from escalations.services import escalation_deny
from policies.models import Policy, PolicyException
from policies.services import exception_create, policy_create
from proxy.models import UpstreamServer
from tests.conftest import TEST_ACTOR
from tests.escalations.helpers import open_escalation
from tests.factories import AgentFactory, AlertFactory, UpstreamServerFactory

pytestmark = pytest.mark.django_db


@dataclass
class Bulk:
    model: type
    action: str
    make: Callable[[int], Any]  # creates the i-th row in a state the action applies to
    changed: Callable[[Any], bool]  # the row, re-read, shows the action's effect
    operation: str  # the audit action written per row
    role: str = "admin"


def _policy(i: int, enabled: bool) -> Policy:
    return policy_create(data={"name": f"rule {i}", "effect": "deny", "enabled": enabled}, by=TEST_ACTOR)


BULK = [
    Bulk(
        Agent, "suspend_agents", lambda i: AgentFactory(), lambda a: a.status == AgentStatus.SUSPENDED, "agent.suspend"
    ),
    Bulk(
        Agent,
        "reactivate_agents",
        lambda i: agent_suspend(agent=AgentFactory(), by=TEST_ACTOR),
        lambda a: a.status == AgentStatus.ACTIVE,
        "agent.reactivate",
    ),
    Bulk(
        AgentToken,
        "revoke_tokens",
        lambda i: agent_token_issue(agent=AgentFactory(), by=TEST_ACTOR)[0],
        lambda t: t.revoked_at is not None,
        "agent_token.revoke",
    ),
    Bulk(
        ApiKey,
        "revoke_keys",
        lambda i: api_key_create(name=f"k{i}", role="viewer", by=TEST_ACTOR)[0],
        lambda k: k.revoked_at is not None,
        "api_key.revoke",
    ),
    Bulk(Policy, "enable_policies", lambda i: _policy(i, False), lambda p: p.enabled, "policy.update"),
    Bulk(Policy, "disable_policies", lambda i: _policy(i, True), lambda p: not p.enabled, "policy.update"),
    Bulk(
        PolicyException,
        "revoke_exceptions",
        lambda i: exception_create(agent=AgentFactory(), server="fs", tool=f"t{i}", by=TEST_ACTOR),
        lambda e: e.revoked_at is not None,
        "exception.revoke",
    ),
    Bulk(
        UpstreamServer, "disable_servers", lambda i: UpstreamServerFactory(), lambda s: not s.enabled, "server.update"
    ),
    Bulk(
        UpstreamServer,
        "enable_servers",
        lambda i: UpstreamServerFactory(enabled=False),
        lambda s: s.enabled,
        "server.update",
    ),
    Bulk(
        Alert,
        "acknowledge_alerts",
        lambda i: AlertFactory(),
        lambda a: a.status == "acknowledged",
        "alert.acknowledge",
        "approver",
    ),
    Bulk(
        Alert, "resolve_alerts", lambda i: AlertFactory(), lambda a: a.status == "resolved", "alert.resolve", "approver"
    ),
    Bulk(
        Alert,
        "resolve_false_positive",
        lambda i: AlertFactory(),
        lambda a: a.status == "resolved" and a.false_positive,
        "alert.resolve",
        "approver",
    ),
    Bulk(
        Escalation,
        "approve_escalations",
        lambda i: open_escalation(AgentFactory(), request_id=f"r{i}"),
        lambda e: e.status == "approved",
        "escalation.approve",
        "approver",
    ),
    Bulk(
        Escalation,
        "approve_with_exception",
        lambda i: open_escalation(AgentFactory(), request_id=f"r{i}"),
        lambda e: e.status == "approved" and e.exception_id is not None,
        "escalation.approve",
        "approver",
    ),
    Bulk(
        Escalation,
        "deny_escalations",
        lambda i: open_escalation(AgentFactory(), request_id=f"r{i}"),
        lambda e: e.status == "denied",
        "escalation.deny",
        "approver",
    ),
]


def changelist(model) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")


def run_action(client, bulk: Bulk, rows: list) -> Any:
    return client.post(
        changelist(bulk.model),
        {"action": bulk.action, "_selected_action": [r.pk for r in rows], "index": 0},
    )


@pytest.fixture
def person(request, admin_user, approver_user, viewer_user):
    return {"admin": admin_user, "approver": approver_user, "viewer": viewer_user}


@pytest.mark.parametrize("bulk", BULK, ids=lambda b: b.action)
def test_a_bulk_action_changes_the_selected_rows_and_audits_each(client, person, bulk):
    rows = [bulk.make(i) for i in range(3)]
    untouched = rows.pop()
    events_before = AuditEvent.objects.filter(action=bulk.operation).count()
    client.force_login(person[bulk.role])

    response = run_action(client, bulk, rows)

    assert response.status_code == 302, response.content[:500]
    for row in rows:
        assert bulk.changed(bulk.model.objects.get(pk=row.pk)), (bulk.action, row.pk)
    assert not bulk.changed(bulk.model.objects.get(pk=untouched.pk))
    events = AuditEvent.objects.filter(action=bulk.operation).order_by("id")[events_before:]
    assert len(events) == len(rows)
    assert {e.actor for e in events} == {f"person:{person[bulk.role].username}"}


@pytest.mark.parametrize("bulk", BULK, ids=lambda b: b.action)
def test_a_person_below_the_role_cannot_run_it(client, person, bulk):
    rows = [bulk.make(0)]
    below = {"admin": "approver", "approver": "viewer"}[bulk.role]
    client.force_login(person[below])
    events_before = AuditEvent.objects.count()

    response = run_action(client, bulk, rows)

    # Django admin answers an action the user may not run with the changelist (no action applied).
    assert response.status_code in (200, 302, 403)
    assert not bulk.changed(bulk.model.objects.get(pk=rows[0].pk))
    assert AuditEvent.objects.count() == events_before


def test_an_already_decided_escalation_is_skipped_with_a_message(client, approver_user):
    pending = open_escalation(AgentFactory(), request_id="a")
    decided = open_escalation(AgentFactory(), request_id="b")
    escalation_deny(escalation=decided, by=TEST_ACTOR, note="earlier")
    client.force_login(approver_user)

    response = run_action(client, BULK[-3], [pending, decided])

    assert Escalation.objects.get(pk=pending.pk).status == "approved"
    assert Escalation.objects.get(pk=decided.pk).status == "denied"
    messages = [str(m) for m in response.wsgi_request._messages]
    assert "Skipped 1 already decided." in messages


def test_audit_events_are_read_only_in_admin(client, admin_user):
    from audit.services import audit_admin

    audit_admin(by=TEST_ACTOR, operation="test.op", target="x")
    event = AuditEvent.objects.get(action="test.op")
    client.force_login(admin_user)

    assert client.get(reverse("admin:audit_auditevent_add")).status_code == 403
    change = client.get(reverse("admin:audit_auditevent_change", args=[event.pk]))
    assert change.status_code == 200 and b'name="_save"' not in change.content
    assert client.post(reverse("admin:audit_auditevent_change", args=[event.pk]), {"action": "x"}).status_code == 403
    assert client.get(reverse("admin:audit_auditevent_delete", args=[event.pk])).status_code == 403
    assert AuditEvent.objects.get(pk=event.pk).action == "test.op"


CHANGELISTS = [Agent, AgentToken, ApiKey, Alert, AuditEvent, Escalation, Policy, PolicyException, UpstreamServer]


def _fill(model, n: int, start: int) -> None:
    maker = {b.model: b.make for b in BULK}.get(model)
    if model is AuditEvent:
        from audit.services import audit_admin

        for i in range(n):
            audit_admin(by=TEST_ACTOR, operation="fill", target=f"t{i}")
        return
    for i in range(start, start + n):
        maker(i)


@pytest.mark.parametrize("model", CHANGELISTS, ids=lambda m: m.__name__)
def test_a_changelist_runs_a_fixed_number_of_queries_as_rows_grow(client, admin_user, model):
    """No per-row queries (list_select_related, prefetches): 5 rows and 60 rows cost the same."""
    client.force_login(admin_user)
    _fill(model, 5, start=100)
    with CaptureQueriesContext(connection) as few:
        assert client.get(changelist(model)).status_code == 200
    _fill(model, 55, start=200)
    with CaptureQueriesContext(connection) as many:
        assert client.get(changelist(model)).status_code == 200
    assert len(many) == len(few), [q["sql"][:120] for q in many.captured_queries]
