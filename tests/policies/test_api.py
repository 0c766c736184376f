"""REST API for policies (CRUD, simulate, replay) and exceptions, and who may use each endpoint."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import audit_record
from policies.engine import engine_cache
from policies.models import Policy, PolicyException
from policies.selectors import policy_version
from policies.services import exception_create, policy_create
from tests.conftest import TEST_ACTOR
from tests.factories import AgentFactory, RoleFactory

pytestmark = pytest.mark.django_db

POLICIES = "/api/v1/policies/"
SIMULATE = f"{POLICIES}simulate/"
REPLAY = f"{POLICIES}replay/"
EXCEPTIONS = "/api/v1/exceptions/"

READ_FILES = {"name": "Read files", "effect": "allow", "servers": ["fs"], "actions": ["read"]}
HOLD_DELETES = {"name": "Hold deletes", "effect": "escalate", "servers": ["fs"], "actions": ["delete"]}
NO_SHADOW = {"name": "No shadow file", "effect": "deny", "resources": ["/etc/shadow"], "reason": "Never."}


@pytest.fixture(autouse=True)
def fresh_engine_cache():
    """Each test starts with no compiled engine, so simulate sees the rules the test just wrote."""
    engine_cache.reset()
    yield
    engine_cache.reset()


def bearer(raw: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def send(client, method: str, url: str, key: str | None = None, body: Any = None):
    extra = bearer(key) if key else {}
    if body is None:
        return getattr(client, method)(url, **extra)
    return getattr(client, method)(url, data=json.dumps(body), content_type="application/json", **extra)


def rows(response) -> list[dict]:
    assert response.status_code == 200, response.content
    data = response.json()
    return data["results"] if isinstance(data, dict) else data


def error_fields(response, status: int = 400) -> dict[str, list[str]]:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid" and error["message"]
    return error["fields"]


# --- policies CRUD --------------------------------------------------------------------------


def test_an_admin_creates_a_policy(client, admin_key):
    body = HOLD_DELETES | {
        "priority": 200,
        "conditions": [{"arg": "options.recursive", "op": "eq", "value": True}],
        "time_window": {"days": ["mon"], "start": "22:00", "end": "06:00", "timezone": "Europe/Berlin"},
        "reason": "A human checks deletes.",
    }
    response = send(client, "post", POLICIES, admin_key, body)

    assert response.status_code == 201, response.content
    data = response.json()
    assert data["policy_id"] == "hold-deletes"
    assert {k: data[k] for k in body} == body | {"time_window": body["time_window"]}
    assert (data["mode"], data["enabled"], data["created_by"]) == ("enforce", True, "api_key:admin-key")
    assert Policy.objects.get().slug == "hold-deletes"
    assert AuditEvent.objects.filter(action="policy.create", actor="api_key:admin-key").exists()


def test_it_lists_filters_and_retrieves_policies(client, viewer_key):
    policy_create(data=READ_FILES | {"priority": 10}, by=TEST_ACTOR)
    deny = policy_create(data=NO_SHADOW | {"priority": 50}, by=TEST_ACTOR)

    assert [p["policy_id"] for p in rows(send(client, "get", POLICIES, viewer_key))] == ["no-shadow-file", "read-files"]
    assert [p["policy_id"] for p in rows(send(client, "get", f"{POLICIES}?effect=deny", viewer_key))] == [
        "no-shadow-file"
    ]
    assert rows(send(client, "get", f"{POLICIES}?enabled=false", viewer_key)) == []
    response = send(client, "get", f"{POLICIES}{deny.pk}/", viewer_key)
    assert response.status_code == 200
    assert (response.json()["id"], response.json()["reason"]) == (deny.pk, "Never.")
    assert send(client, "get", f"{POLICIES}999999/", viewer_key).status_code == 404


@pytest.mark.parametrize("url", [POLICIES, EXCEPTIONS])
def test_lists_are_paginated(client, viewer_key, url):
    assert "results" in send(client, "get", url, viewer_key).json()


def test_put_replaces_and_patch_merges(client, admin_key):
    policy = policy_create(data=HOLD_DELETES | {"reason": "old"}, by=TEST_ACTOR)
    url = f"{POLICIES}{policy.pk}/"

    patched = send(client, "patch", url, admin_key, {"name": "Hold every delete", "priority": 7})
    assert patched.status_code == 200, patched.content
    data = patched.json()
    assert (data["name"], data["priority"], data["reason"], data["policy_id"]) == (
        "Hold every delete",
        7,
        "old",
        "hold-deletes",
    )

    put = send(client, "put", url, admin_key, {"name": "Hold every delete", "effect": "deny"})
    assert put.status_code == 200, put.content
    assert (put.json()["effect"], put.json()["servers"], put.json()["reason"]) == ("deny", [], "")
    assert put.json()["policy_id"] == "hold-deletes"

    fields = error_fields(send(client, "put", url, admin_key, {"priority": 1}))
    assert set(fields) == {"name", "effect"}


def test_delete_removes_the_policy(client, admin_key):
    policy = policy_create(data=HOLD_DELETES, by=TEST_ACTOR)
    version = policy_version()
    assert send(client, "delete", f"{POLICIES}{policy.pk}/", admin_key).status_code == 204
    assert not Policy.objects.exists()
    assert policy_version() == version + 1
    assert send(client, "delete", f"{POLICIES}{policy.pk}/", admin_key).status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (HOLD_DELETES | {"conditions": [{"arg": "a", "op": "like", "value": 1}]}, "conditions[0].op"),
        (HOLD_DELETES | {"conditions": [{"arg": "a", "op": "regex", "value": "(a+)+$"}]}, "conditions[0].value"),
        (HOLD_DELETES | {"servers": ["fs-["]}, "servers"),
        (HOLD_DELETES | {"tools": [""]}, "tools"),
        (HOLD_DELETES | {"effect": "permit"}, "effect"),
        (HOLD_DELETES | {"colour": "red"}, "colour"),
        (HOLD_DELETES | {"priority": True}, "priority"),
        (HOLD_DELETES | {"time_window": {"timezone": "Mars/Olympus"}}, "time_window.timezone"),
        (HOLD_DELETES | {"roles": ["ghosts"]}, "roles"),
        (HOLD_DELETES | {"agents": [123456]}, "agents"),
        ({"effect": "allow"}, "name"),
    ],
)
def test_a_bad_policy_is_a_400_naming_the_field(client, admin_key, body, field):
    fields = error_fields(send(client, "post", POLICIES, admin_key, body))
    assert field in fields
    assert not Policy.objects.exists()


def test_a_body_that_is_not_an_object_is_a_400(client, admin_key):
    assert "non_field_errors" in error_fields(send(client, "post", POLICIES, admin_key, [HOLD_DELETES]))


def test_a_duplicate_name_is_a_400_on_name(client, admin_key):
    policy_create(data=HOLD_DELETES, by=TEST_ACTOR)
    assert error_fields(send(client, "post", POLICIES, admin_key, HOLD_DELETES)) == {"name": ["Already taken."]}


def test_an_object_inside_a_matcher_list_is_a_400(client, admin_key):
    assert "servers" in error_fields(send(client, "post", POLICIES, admin_key, HOLD_DELETES | {"servers": [{}]}))


# --- who may do what ------------------------------------------------------------------------


@pytest.fixture
def existing(db) -> dict[str, int]:
    policy = policy_create(data=HOLD_DELETES, by=TEST_ACTOR)
    exception = exception_create(agent=AgentFactory(name="bot"), server="fs", tool="delete_file", by=TEST_ACTOR)
    return {"policy": policy.pk, "exception": exception.pk}


def writes(ids: dict[str, int]) -> list[tuple[str, str, Any]]:
    return [
        ("post", POLICIES, READ_FILES),
        ("put", f"{POLICIES}{ids['policy']}/", READ_FILES),
        ("patch", f"{POLICIES}{ids['policy']}/", {"priority": 1}),
        ("delete", f"{POLICIES}{ids['policy']}/", None),
        ("post", EXCEPTIONS, {"agent": 1, "server": "fs", "tool": "x"}),
        ("delete", f"{EXCEPTIONS}{ids['exception']}/", None),
    ]


def reads(ids: dict[str, int]) -> list[str]:
    return [POLICIES, f"{POLICIES}{ids['policy']}/", EXCEPTIONS, f"{EXCEPTIONS}{ids['exception']}/"]


@pytest.mark.parametrize("persona_key", ["viewer_key", "approver_key"])
def test_viewers_and_approvers_read_but_cannot_write(client, request, existing, persona_key):
    key = request.getfixturevalue(persona_key)
    for url in reads(existing):
        assert send(client, "get", url, key).status_code == 200, url
    for method, url, body in writes(existing):
        response = send(client, method, url, key, body)
        assert response.status_code == 403, (method, url)
        assert response.json()["error"]["code"] == "permission_denied"
    assert Policy.objects.count() == 1 and PolicyException.objects.get().revoked_at is None


def test_without_credentials_everything_is_401(client, existing):
    everything = [("get", url, None) for url in reads(existing)] + writes(existing)
    everything += [("post", SIMULATE, {}), ("post", REPLAY, {"policies": []})]
    for method, url, body in everything:
        response = send(client, method, url, None, body)
        assert response.status_code == 401, (method, url)
        assert response["WWW-Authenticate"] == "Bearer"


def test_an_outsider_person_gets_403_everywhere(client, outsider_user, existing):
    client.force_login(outsider_user)
    everything = [("get", url, None) for url in reads(existing)] + writes(existing)
    everything += [("post", SIMULATE, {}), ("post", REPLAY, {"policies": []})]
    for method, url, body in everything:
        assert send(client, method, url, None, body).status_code == 403, (method, url)


def test_a_signed_in_admin_person_can_write(client, admin_user):
    client.force_login(admin_user)
    response = send(client, "post", POLICIES, None, READ_FILES)
    assert response.status_code == 201
    assert response.json()["created_by"] == "person:alice-admin"


# --- simulate -------------------------------------------------------------------------------


@pytest.fixture
def rules(db):
    for body in (READ_FILES, HOLD_DELETES, NO_SHADOW):
        policy_create(data=body, by=TEST_ACTOR)


def simulate(client, key: str, **body):
    response = send(client, "post", SIMULATE, key, body)
    assert response.status_code == 200, response.content
    return response.json()


def test_simulate_allows_escalates_and_denies_with_a_trace(client, viewer_key, rules):
    agent = AgentFactory(name="bot")

    allowed = simulate(client, viewer_key, agent=str(agent.pk), server="fs", tool="read_file", arguments={"path": "/a"})
    assert (allowed["decision"], allowed["policy_id"]) == ("allow", "read-files")
    assert allowed["call"] == {
        "agent": agent.pk,
        "server": "fs",
        "tool": "read_file",
        "action": "read",
        "resource": "/a",
        "risk_tier": "low",
        "roles": [],
    }
    assert {"policy_id": "read-files", "effect": "allow", "mode": "enforce", "matched": True} in allowed["trace"]
    assert {t["policy_id"] for t in allowed["trace"]} == {"read-files", "hold-deletes", "no-shadow-file"}

    escalated = simulate(client, viewer_key, agent="bot", server="fs", tool="delete_file", arguments={"path": "/a"})
    assert (escalated["decision"], escalated["policy_id"]) == ("escalate", "hold-deletes")

    denied = simulate(client, viewer_key, agent="bot", server="fs", tool="read_file", arguments={"path": "/etc/shadow"})
    assert (denied["decision"], denied["policy_id"], denied["reason"]) == ("deny", "no-shadow-file", "Never.")

    unmatched = simulate(client, viewer_key, agent="bot", server="git", tool="push")
    assert (unmatched["decision"], unmatched["policy_id"]) == ("deny", "default.deny")


def test_simulate_applies_roles_exceptions_and_overrides(client, admin_key, rules):
    agent = AgentFactory(name="bot")
    agent.roles.add(RoleFactory(name="ops"))
    policy_create(data={"name": "Ops run", "effect": "allow", "roles": ["ops"], "tools": ["run_*"]}, by=TEST_ACTOR)
    exception = exception_create(agent=agent, server="fs", tool="delete_file", resource="/home/x", by=TEST_ACTOR)

    ran = simulate(client, admin_key, agent="bot", server="ci", tool="run_tests")
    assert (ran["policy_id"], ran["call"]["roles"]) == ("ops-run", ["ops"])
    excepted = simulate(client, admin_key, agent="bot", server="fs", tool="delete_file", arguments={"path": "/home/x"})
    assert (excepted["decision"], excepted["policy_id"]) == ("allow", f"exception.{exception.pk}")
    overridden = simulate(client, admin_key, agent="bot", server="fs", tool="read_file", action="delete", resource="")
    assert (overridden["decision"], overridden["call"]["resource"]) == ("escalate", "")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"agent": "nobody", "server": "fs", "tool": "read_file"}, "agent"),
        ({"agent": "999999", "server": "fs", "tool": "read_file"}, "agent"),
        ({"server": "fs", "tool": "read_file"}, "agent"),
        ({"agent": "bot", "tool": "read_file"}, "server"),
        ({"agent": "bot", "server": "fs"}, "tool"),
        ({"agent": "bot", "server": "fs", "tool": "t", "arguments": [1]}, "arguments"),
        ({"agent": "bot", "server": "fs", "tool": "t", "risk_tier": "extreme"}, "risk_tier"),
    ],
)
def test_simulate_refuses_a_bad_call(client, viewer_key, body, field):
    AgentFactory(name="bot")
    assert field in error_fields(send(client, "post", SIMULATE, viewer_key, body))


# --- replay ---------------------------------------------------------------------------------


def past_call(agent, *, decision: str, policy_id: str, tool: str = "read_file", resource: str = "/srv/a", **extra):
    return audit_record(
        kind="decision",
        actor=TEST_ACTOR,
        agent=agent,
        server="fs",
        tool=tool,
        action="read" if tool.startswith("read") else "delete",
        resource=resource,
        decision=decision,
        policy_id=policy_id,
        arguments={"path": resource},
        details={"risk_tier": "low", "roles": []},
        **extra,
    )


def replay(client, key: str, **body):
    response = send(client, "post", REPLAY, key, body)
    assert response.status_code == 200, response.content
    return response.json()


def test_replay_reports_calls_a_draft_deny_would_change(client, viewer_key):
    agent = AgentFactory(name="bot")
    reads_a = past_call(agent, decision="allow", policy_id="read-files")
    reads_secret = past_call(agent, decision="allow", policy_id="read-files", resource="/srv/secret/key")
    past_call(agent, decision="deny", policy_id="default.deny", tool="push")
    draft_allow = {"name": "reads", "effect": "allow", "servers": ["fs"], "actions": ["read"]}
    draft_deny = {"name": "no secrets", "effect": "deny", "resources": ["/srv/secret/*"]}

    result = replay(client, viewer_key, policies=[draft_allow, draft_deny])

    assert (result["evaluated"], result["changed"], result["mode"]) == (3, 1, "replace")
    assert result["transitions"] == {"allow->deny": 1}
    [change] = result["changes"]
    assert change["event_id"] == reads_secret.pk
    assert change["before"] == {"decision": "allow", "policy_id": "read-files"}
    assert change["after"] == {"decision": "deny", "policy_id": "draft-2"}
    assert reads_a.pk not in [c["event_id"] for c in result["changes"]]


def test_replay_with_no_drafts_shows_what_default_deny_would_change(client, viewer_key):
    agent = AgentFactory()
    events = [past_call(agent, decision="allow", policy_id="read-files") for _ in range(3)]
    result = replay(client, viewer_key, policies=[], limit=2)
    assert result["transitions"] == {"allow->deny": 2}
    assert [c["event_id"] for c in result["changes"]] == [events[2].pk, events[1].pk]  # newest first


def test_replay_add_mode_keeps_the_live_rules(client, viewer_key):
    agent = AgentFactory()
    policy_create(data=READ_FILES, by=TEST_ACTOR)
    past_call(agent, decision="allow", policy_id="read-files")
    deleted = past_call(agent, decision="deny", policy_id="default.deny", tool="delete_file")
    draft = {"name": "hold", "effect": "escalate", "actions": ["delete"]}

    result = replay(client, viewer_key, policies=[draft], mode="add")

    assert result["transitions"] == {"deny->escalate": 1}
    assert [c["event_id"] for c in result["changes"]] == [deleted.pk]
    assert replay(client, viewer_key, policies=[draft])["transitions"] == {"deny->escalate": 1, "allow->deny": 1}


def test_replay_skips_fail_closed_and_non_decision_events(client, viewer_key):
    agent = AgentFactory()
    past_call(agent, decision="deny", policy_id="system.fail_closed")
    audit_record(kind="outcome", actor=TEST_ACTOR, agent=agent, server="fs", tool="read_file", decision="allow")
    result = replay(client, viewer_key, policies=[{"name": "all", "effect": "allow"}])
    assert (result["evaluated"], result["changed"]) == (0, 0)


def test_replay_does_not_claim_a_rule_change_would_undo_a_dlp_or_baseline_deny(client, viewer_key):
    agent = AgentFactory()
    for policy_id in ("dlp.block", "baseline.tool_drift", "baseline.tool_changed"):
        past_call(agent, decision="deny", policy_id=policy_id)
    result = replay(client, viewer_key, policies=[{"name": "all", "effect": "allow"}])
    assert result["changed"] == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"policies": [{"name": "x", "effect": "permit"}]}, "policies[0].effect"),
        ({"policies": [{"name": "x", "effect": "allow"}, {"effect": "deny"}]}, "policies[1].name"),
        (
            {"policies": [{"name": "x", "effect": "deny", "conditions": [{"arg": "a", "op": "?", "value": 1}]}]},
            "policies[0].conditions[0].op",
        ),
        ({"policies": "all"}, "policies"),
        ({}, "policies"),
        ({"policies": [], "limit": 0}, "limit"),
        ({"policies": [], "mode": "merge"}, "mode"),
    ],
)
def test_replay_refuses_an_invalid_draft(client, viewer_key, body, field):
    assert field in error_fields(send(client, "post", REPLAY, viewer_key, body))


# --- exceptions -----------------------------------------------------------------------------


def test_an_admin_creates_lists_and_revokes_an_exception(client, admin_key, viewer_key):
    agent = AgentFactory(name="bot")
    expires = (timezone.now() + timedelta(days=1)).replace(microsecond=0)
    body = {"agent": agent.pk, "server": "fs", "tool": "delete_file", "resource": "/home/x", "note": "ok"}

    created = send(client, "post", EXCEPTIONS, admin_key, body | {"expires_at": expires.isoformat()})

    assert created.status_code == 201, created.content
    data = created.json()
    assert {k: data[k] for k in body} == body
    assert (data["active"], data["revoked_at"], data["created_by"]) == (True, None, "api_key:admin-key")
    assert [e["id"] for e in rows(send(client, "get", EXCEPTIONS, viewer_key))] == [data["id"]]
    assert rows(send(client, "get", f"{EXCEPTIONS}?server=git", viewer_key)) == []
    assert send(client, "get", f"{EXCEPTIONS}{data['id']}/", viewer_key).json()["note"] == "ok"

    assert send(client, "delete", f"{EXCEPTIONS}{data['id']}/", admin_key).status_code == 204

    row = PolicyException.objects.get()  # revoked, not deleted
    assert row.revoked_at is not None and row.revoked_by == "api_key:admin-key"
    shown = send(client, "get", f"{EXCEPTIONS}{data['id']}/", viewer_key).json()
    assert shown["active"] is False and shown["revoked_by"] == "api_key:admin-key"
    again = send(client, "delete", f"{EXCEPTIONS}{data['id']}/", admin_key)
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"


def test_a_duplicate_active_exception_is_409(client, admin_key):
    agent = AgentFactory()
    body = {"agent": agent.pk, "server": "fs", "tool": "delete_file"}
    assert send(client, "post", EXCEPTIONS, admin_key, body).status_code == 201
    response = send(client, "post", EXCEPTIONS, admin_key, body)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"
    assert PolicyException.objects.count() == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"agent": 999999, "server": "fs", "tool": "t"}, "agent"),
        ({"server": "fs", "tool": "t"}, "agent"),
        ({"agent": "AGENT", "tool": "t"}, "server"),
        ({"agent": "AGENT", "server": "fs"}, "tool"),
        ({"agent": "AGENT", "server": "s" * 65, "tool": "t"}, "server"),
        ({"agent": "AGENT", "server": "fs", "tool": "t", "expires_at": "PAST"}, "expires_at"),
        ({"agent": "AGENT", "server": "fs", "tool": "t", "expires_at": "tomorrow"}, "expires_at"),
    ],
)
def test_an_invalid_exception_is_a_400(client, admin_key, body, field):
    agent = AgentFactory()
    past = (timezone.now() - timedelta(hours=1)).isoformat()
    body = {k: agent.pk if v == "AGENT" else past if v == "PAST" else v for k, v in body.items()}
    assert field in error_fields(send(client, "post", EXCEPTIONS, admin_key, body))
    assert not PolicyException.objects.exists()


def test_exceptions_cannot_be_edited_in_place(client, admin_key, existing):
    url = f"{EXCEPTIONS}{existing['exception']}/"
    assert send(client, "put", url, admin_key, {"server": "git"}).status_code == 405
    assert send(client, "patch", url, admin_key, {"server": "git"}).status_code == 405
