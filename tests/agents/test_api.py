"""REST API for agents, their tokens and roles: happy paths, field errors, state conflicts, audit."""

from __future__ import annotations

import pytest

from agents.models import Agent, AgentSession, AgentStatus, AgentToken, Role
from agents.selectors import agent_token_authenticate
from agents.services import agent_session_open, agent_suspend
from audit.models import AuditEvent
from tests.api_helpers import error, ok, send
from tests.conftest import TEST_ACTOR
from tests.factories import AgentFactory, RoleFactory, UpstreamServerFactory

pytestmark = pytest.mark.django_db
AGENTS = "/api/v1/agents/"


def test_create_returns_the_design_fields_and_is_audited(client, admin_key):
    RoleFactory(name="readers")
    body = {"name": "billing-bot", "description": "pays", "owner": "finance", "roles": ["readers"]}

    agent = ok(send(client, "post", AGENTS, admin_key, body | {"max_hold_seconds": 120}), 201)

    assert {k: agent[k] for k in ("name", "status", "risk_tier", "risk_score", "roles", "max_hold_seconds")} == {
        "name": "billing-bot",
        "status": "active",
        "risk_tier": "low",
        "risk_score": 0.0,
        "roles": ["readers"],
        "max_hold_seconds": 120,
    }
    event = AuditEvent.objects.get(action="agent.create")
    assert (event.actor, event.agent_id) == ("api_key:admin-key", agent["id"])


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {"name"}),
        ({"name": ""}, {"name"}),
        ({"name": "x" * 101}, {"name"}),
        ({"name": "a", "max_hold_seconds": 0}, {"max_hold_seconds"}),
        ({"name": "a", "max_hold_seconds": "soon"}, {"max_hold_seconds"}),
        ({"name": "a", "roles": "readers"}, {"roles"}),
        ({"name": "a", "roles": ["no such role"]}, {"roles.0"}),
        ({"name": "a", "roles": ["ghosts"]}, {"roles"}),
    ],
)
def test_bad_agent_bodies_are_400_with_fields_and_create_nothing(client, admin_key, body, fields):
    err = error(send(client, "post", AGENTS, admin_key, body), 400)

    assert err["code"] == "invalid" and set(err["fields"]) == fields
    assert not Agent.objects.exists()
    assert not AuditEvent.objects.filter(action="agent.create").exists()


def test_a_duplicate_name_is_a_field_error(client, admin_key):
    AgentFactory(name="twin")
    assert error(send(client, "post", AGENTS, admin_key, {"name": "twin"}), 400)["fields"] == {
        "name": ["Already taken."]
    }


def test_list_filters_by_status_role_and_search(client, viewer_key):
    role = RoleFactory(name="ops")
    a = AgentFactory(name="alpha", owner="Zebra Squad")
    a.roles.add(role)
    b = AgentFactory(name="beta")
    agent_suspend(agent=b, by=TEST_ACTOR)

    def names(query: str) -> list[str]:
        return [r["name"] for r in ok(send(client, "get", f"{AGENTS}?{query}", viewer_key))["results"]]

    assert names("status=suspended") == ["beta"]
    assert names("role=ops") == ["alpha"]
    assert names("search=zebra") == ["alpha"]
    assert error(send(client, "get", f"{AGENTS}?status=sleeping", viewer_key), 400)["fields"].keys() == {"status"}


def test_patch_changes_only_what_is_sent(client, admin_key):
    agent = AgentFactory(name="old", owner="me")

    body = ok(send(client, "patch", f"{AGENTS}{agent.pk}/", admin_key, {"owner": "you"}))

    assert (body["name"], body["owner"]) == ("old", "you")
    assert AuditEvent.objects.get(action="agent.update").details == {"owner": "you"}


def test_suspend_ends_sessions_and_reactivate_restores(client, admin_key):
    agent = AgentFactory()
    other = AgentFactory()
    server = UpstreamServerFactory()
    for who in (agent, other):
        agent_session_open(agent_id=who.pk, server_id=server.pk, era="modern", protocol_version="x", client_info={})

    body = ok(send(client, "post", f"{AGENTS}{agent.pk}/suspend/", admin_key, {"reason": "leaking"}))

    assert (body["status"], body["suspended_reason"]) == ("suspended", "leaking")
    assert not AgentSession.objects.filter(agent=agent, ended_at__isnull=True).exists()
    assert AgentSession.objects.filter(agent=other, ended_at__isnull=True).count() == 1
    assert error(send(client, "post", f"{AGENTS}{agent.pk}/suspend/", admin_key), 409)["code"] == "conflict"

    assert ok(send(client, "post", f"{AGENTS}{agent.pk}/reactivate/", admin_key))["status"] == "active"
    assert error(send(client, "post", f"{AGENTS}{agent.pk}/reactivate/", admin_key), 409)["code"] == "conflict"
    assert list(
        AuditEvent.objects.filter(action__startswith="agent.").order_by("id").values_list("action", flat=True)
    ) == [
        "agent.suspend",
        "agent.reactivate",
    ]


def test_a_bad_suspend_body_is_400_and_suspends_nothing(client, admin_key):
    agent = AgentFactory()
    assert error(send(client, "post", f"{AGENTS}{agent.pk}/suspend/", admin_key, {"reason": ["x"]}), 400)[
        "fields"
    ].keys() == {"reason"}
    assert Agent.objects.get(pk=agent.pk).status == AgentStatus.ACTIVE


def test_delete_needs_a_suspended_agent(client, admin_key):
    agent = AgentFactory()
    assert "suspend it" in error(send(client, "delete", f"{AGENTS}{agent.pk}/", admin_key), 409)["message"]

    agent_suspend(agent=agent, by=TEST_ACTOR)
    assert send(client, "delete", f"{AGENTS}{agent.pk}/", admin_key).status_code == 204
    assert not Agent.objects.exists()
    assert AuditEvent.objects.get(action="agent.delete").details == {"name": agent.name}


def test_a_token_is_shown_once_works_on_mcp_and_revokes(client, admin_key, viewer_key):
    agent = AgentFactory()

    issued = ok(send(client, "post", f"{AGENTS}{agent.pk}/tokens/", admin_key, {"label": "ci"}), 201)

    assert issued["token"].startswith("bhv_agent_") and issued["token"].startswith(issued["prefix"])
    assert agent_token_authenticate(issued["token"]).agent_id == agent.pk
    listed = ok(send(client, "get", f"{AGENTS}{agent.pk}/tokens/", viewer_key))
    assert [t["label"] for t in listed] == ["ci"] and "token" not in listed[0]
    assert issued["token"] not in str(AuditEvent.objects.values_list("details", flat=True))

    revoked = ok(send(client, "delete", f"{AGENTS}{agent.pk}/tokens/{issued['id']}/", admin_key))

    assert revoked["revoked_at"] is not None
    assert agent_token_authenticate(issued["token"]) is None
    assert error(send(client, "delete", f"{AGENTS}{agent.pk}/tokens/{issued['id']}/", admin_key), 409)
    assert AuditEvent.objects.filter(action__startswith="agent_token.").count() == 2


def test_a_token_of_another_agent_is_404(client, admin_key):
    mine, theirs = AgentFactory(), AgentFactory()
    token = ok(send(client, "post", f"{AGENTS}{theirs.pk}/tokens/", admin_key, {}), 201)

    assert error(send(client, "delete", f"{AGENTS}{mine.pk}/tokens/{token['id']}/", admin_key), 404)
    assert AgentToken.objects.get(pk=token["id"]).revoked_at is None


def test_a_bad_token_label_is_400(client, admin_key):
    agent = AgentFactory()
    assert error(send(client, "post", f"{AGENTS}{agent.pk}/tokens/", admin_key, {"label": "x" * 101}), 400)[
        "fields"
    ].keys() == {"label"}
    assert not AgentToken.objects.exists()


def test_roles_are_created_renamed_and_validated(client, admin_key):
    role = ok(send(client, "post", "/api/v1/roles/", admin_key, {"name": "ops", "description": "on call"}), 201)
    assert role["agent_count"] == 0
    assert error(send(client, "post", "/api/v1/roles/", admin_key, {"name": "ops"}), 400)["fields"] == {
        "name": ["Already taken."]
    }
    assert error(send(client, "post", "/api/v1/roles/", admin_key, {"name": "not a slug"}), 400)["fields"].keys() == {
        "name"
    }

    assert ok(send(client, "patch", f"/api/v1/roles/{role['id']}/", admin_key, {"name": "sre"}))["name"] == "sre"
    assert Role.objects.get().name == "sre"
    assert AuditEvent.objects.filter(action__in=["role.create", "role.update"]).count() == 2
