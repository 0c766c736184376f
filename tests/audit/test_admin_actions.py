"""Every admin action lands on the admin chain with the acting person or key."""

import pytest

from accounts.services import api_key_create, api_key_revoke
from agents.services import (
    agent_create,
    agent_reactivate,
    agent_suspend,
    agent_token_issue,
    agent_token_revoke,
    agent_update,
    role_create,
)
from alerts.services import alert_acknowledge, alert_raise, alert_resolve
from audit.models import AuditEvent
from audit.verify import audit_verify
from behavry.actors import actor_for
from proxy.services import tool_catalog_sync, tool_update, upstream_server_create, upstream_server_update
from tests.factories import AgentFactory, UpstreamServerFactory

pytestmark = pytest.mark.django_db


def last_admin_event() -> AuditEvent:
    return AuditEvent.objects.filter(kind="admin").order_by("-id").first()


def test_agent_lifecycle_is_audited_with_the_person(admin_user):
    by = actor_for(admin_user)
    role_create(name="readers", by=by)
    agent = agent_create(name="bot", roles=["readers"], by=by)
    agent_update(agent=agent, owner="team-b", by=by)
    token, _raw = agent_token_issue(agent=agent, label="ci", by=by)
    agent_token_revoke(token=token, by=by)
    agent_suspend(agent=agent, reason="runaway", by=by)
    agent_reactivate(agent=agent, by=by)
    events = list(AuditEvent.objects.filter(kind="admin").order_by("seq"))
    assert [e.action for e in events] == [
        "role.create",
        "agent.create",
        "agent.update",
        "agent_token.issue",
        "agent_token.revoke",
        "agent.suspend",
        "agent.reactivate",
    ]
    assert {e.actor for e in events} == {"person:alice-admin"}
    assert all(e.agent_id == agent.pk for e in events[1:])
    suspend = events[5]
    assert (suspend.reason, suspend.details) == ("runaway", {"sessions_ended": 0, "escalations_cancelled": 0})
    assert audit_verify().ok


def test_api_key_changes_are_audited_without_the_secret(admin_user):
    by = actor_for(admin_user)
    key, raw = api_key_create(name="siem", role="viewer", by=by)
    created = last_admin_event()
    assert created.action == "api_key.create" and created.details["role"] == "viewer"
    assert raw not in str(AuditEvent.objects.values().get(pk=created.pk))
    api_key_revoke(key=key, by=actor_for(key))
    assert (last_admin_event().action, last_admin_event().actor) == ("api_key.revoke", "api_key:siem")


def test_server_changes_name_the_credential_but_never_record_it(admin_user):
    by = actor_for(admin_user)
    server = upstream_server_create(slug="files", name="Files", url="http://127.0.0.1:9/mcp", by=by)
    upstream_server_update(server=server, auth_header_value="Bearer upstream-secret", by=by)
    event = last_admin_event()
    assert (event.action, event.details) == ("server.update", {"auth_header_value": "(changed)"})
    assert not AuditEvent.objects.filter(details__icontains="upstream-secret").exists()
    upstream_server_update(server=server, name="Files", by=by)  # no change, no event
    assert last_admin_event().pk == event.pk


def test_tool_reclassification_is_audited(admin_user):
    (tool,) = tool_catalog_sync(server=UpstreamServerFactory(), definitions=[{"name": "purge"}])
    tool_update(tool=tool, action_override="delete", by=actor_for(admin_user))
    assert last_admin_event().details == {"action_override": "delete", "resource_argument": ""}


def test_alert_handling_is_audited_with_notes(approver_user):
    by = actor_for(approver_user)
    agent = AgentFactory()
    alert = alert_raise(type="anomaly", severity="warning", title="spike", agent=agent)
    alert_acknowledge(alert=alert, note="looking", by=by)
    alert_resolve(alert=alert, note="batch job", false_positive=True, by=by)
    acknowledge, resolve = AuditEvent.objects.filter(kind="admin").order_by("seq")
    assert (acknowledge.action, acknowledge.reason, acknowledge.agent_id) == ("alert.acknowledge", "looking", agent.pk)
    assert (resolve.action, resolve.details) == ("alert.resolve", {"false_positive": True})
    assert {acknowledge.actor, resolve.actor} == {"person:bob-approver"}


def test_admin_bulk_suspend_writes_one_event_per_agent(client, admin_user):
    agents = [AgentFactory(), AgentFactory()]
    client.force_login(admin_user)
    client.post(
        "/admin/agents/agent/", {"action": "suspend_agents", "_selected_action": [a.pk for a in agents]}, follow=True
    )
    events = AuditEvent.objects.filter(action="agent.suspend")
    assert sorted(events.values_list("agent_id", flat=True)) == sorted(a.pk for a in agents)
    assert set(events.values_list("actor", flat=True)) == {"person:alice-admin"}
