"""REST API for escalations: the approver's queue, approve, deny, bulk, and who may do each."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.conf import settings
from django.middleware.csrf import get_token
from django.test import Client, RequestFactory

from accounts.models import ApiKey
from accounts.services import api_key_revoke
from agents.services import agent_token_issue
from audit.models import AuditEvent
from behavry.actors import Actor
from escalations.models import Escalation, EscalationStatus
from escalations.services import escalation_deny
from policies.models import PolicyException
from tests.conftest import TEST_ACTOR
from tests.escalations.helpers import open_escalation
from tests.factories import AgentFactory

pytestmark = pytest.mark.django_db

ESCALATIONS = "/api/v1/escalations/"
BULK = f"{ESCALATIONS}bulk/"
UNKNOWN_ID = 987654321
PENDING = "the pending escalation's id"  # stands in for it in parametrized bodies
BOB = Actor(kind="person", id="2", name="bob-approver")
DESIGN_FIELDS = {
    "id",
    "status",
    "agent",
    "server",
    "tool",
    "action",
    "resource",
    "arguments",
    "policy_id",
    "reason",
    "risk_tier",
    "created_at",
    "deadline",
    "decided_by",
    "note",
}


@pytest.fixture
def agent(db):
    """A plain agent. (The package conftest's `agent` is the live proxy's, on transactional_db.)"""
    return AgentFactory(name="builder")


@pytest.fixture
def pending(agent) -> Escalation:
    return open_escalation(agent, arguments={"path": "/srv/report.txt", "token": "s3cret"})


def url(escalation_id: int, verb: str = "") -> str:
    return f"{ESCALATIONS}{escalation_id}/" + (f"{verb}/" if verb else "")


def send(client, method: str, path: str, key: str | None = None, body: Any = None, **extra):
    if key:
        extra["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    if body is None:  # no body and no Content-Type, like `curl -X POST`
        return client.generic(method.upper(), path, **extra)
    return getattr(client, method)(path, data=json.dumps(body), content_type="application/json", **extra)


def error(response, status: int) -> dict:
    assert response.status_code == status, response.content
    return response.json()["error"]


def status_of(escalation: Escalation) -> str:
    return Escalation.objects.get(pk=escalation.pk).status


# --- reading -------------------------------------------------------------------------------------


def test_a_viewer_lists_the_pending_queue_paginated(client, viewer_key, agent):
    older = open_escalation(agent, tool="a")
    newer = open_escalation(agent, tool="b")
    escalation_deny(escalation=open_escalation(agent, tool="c"), by=BOB)

    response = send(client, "get", f"{ESCALATIONS}?status=pending", viewer_key)

    assert response.status_code == 200, response.content
    data = response.json()
    assert data["count"] == 2
    assert [row["id"] for row in data["results"]] == [newer.pk, older.pk]
    assert data["results"][0].keys() >= DESIGN_FIELDS
    everything = send(client, "get", ESCALATIONS, viewer_key).json()
    assert everything["count"] == 3


def test_a_page_of_the_list_is_limited(client, viewer_key, agent):
    for tool in ("a", "b", "c"):
        open_escalation(agent, tool=tool)

    data = send(client, "get", f"{ESCALATIONS}?status=pending&limit=2", viewer_key).json()

    assert (data["count"], len(data["results"])) == (3, 2)
    assert data["next"] is not None


def test_an_unknown_status_filter_is_a_400(client, viewer_key, pending):
    assert error(send(client, "get", f"{ESCALATIONS}?status=maybe", viewer_key), 400)["fields"].keys() == {"status"}


def test_a_viewer_reads_one_escalation_with_its_arguments_redacted(client, viewer_key, agent, pending):
    response = send(client, "get", url(pending.pk), viewer_key)

    assert response.status_code == 200, response.content
    data = response.json()
    assert {k: data[k] for k in ("id", "status", "agent", "server", "tool", "policy_id", "risk_tier")} == {
        "id": pending.pk,
        "status": "pending",
        "agent": agent.pk,
        "server": "fs",
        "tool": "write_file",
        "policy_id": "hold-writes",
        "risk_tier": "low",
    }
    assert data["arguments"] == {"path": "/srv/report.txt", "token": "[redacted]"}
    assert (data["decided_by"], data["note"]) == ("", "")


def test_an_unknown_escalation_is_404(client, approver_key):
    assert error(send(client, "get", url(UNKNOWN_ID), approver_key), 404)["code"] == "not_found"
    for verb in ("approve", "deny"):
        assert error(send(client, "post", url(UNKNOWN_ID, verb), approver_key, {}), 404)["code"] == "not_found"


# --- deciding one --------------------------------------------------------------------------------


def test_an_approver_key_approves_with_a_note(client, approver_key, pending):
    response = send(client, "post", url(pending.pk, "approve"), approver_key, {"note": "ship it"})

    assert response.status_code == 200, response.content
    data = response.json()
    assert (data["status"], data["decided_by"], data["note"], data["exception_id"]) == (
        "approved",
        "api_key:approver-key",
        "ship it",
        None,
    )
    assert data["decided_at"] is not None
    assert status_of(pending) == EscalationStatus.APPROVED
    event = AuditEvent.objects.get(action="escalation.approve")
    assert (event.actor, event.resource, event.reason) == (
        "api_key:approver-key",
        f"escalation:{pending.pk}",
        "ship it",
    )


def test_an_approval_with_create_exception_returns_the_new_exception(client, approver_key, agent, pending):
    response = send(client, "post", url(pending.pk, "approve"), approver_key, {"create_exception": True})

    assert response.status_code == 200, response.content
    exception = PolicyException.objects.get()
    assert response.json()["exception_id"] == exception.pk
    assert response.json()["create_exception"] is True
    assert (exception.agent_id, exception.tool, exception.escalation_id) == (agent.pk, "write_file", pending.pk)


def test_an_approval_needs_no_body(client, approver_key, pending):
    response = send(client, "post", url(pending.pk, "approve"), approver_key)

    assert response.status_code == 200, response.content
    assert (response.json()["status"], response.json()["note"]) == ("approved", "")


def test_an_approver_key_denies_with_a_note(client, approver_key, pending):
    response = send(client, "post", url(pending.pk, "deny"), approver_key, {"note": "not on a Friday"})

    assert response.status_code == 200, response.content
    assert (response.json()["status"], response.json()["note"]) == ("denied", "not on a Friday")
    assert status_of(pending) == EscalationStatus.DENIED
    assert AuditEvent.objects.get(action="escalation.deny").actor == "api_key:approver-key"


def test_an_admin_key_may_decide_too(client, admin_key, pending):
    response = send(client, "post", url(pending.pk, "deny"), admin_key, {"note": "no"})

    assert response.status_code == 200, response.content
    assert response.json()["decided_by"] == "api_key:admin-key"


@pytest.mark.parametrize(("first", "second"), [("approve", "deny"), ("deny", "approve"), ("approve", "approve")])
def test_a_second_decision_is_409_and_changes_nothing(client, approver_key, admin_key, pending, first, second):
    assert send(client, "post", url(pending.pk, first), approver_key, {"note": "first"}).status_code == 200
    before = Escalation.objects.filter(pk=pending.pk).values().get()
    events = AuditEvent.objects.count()

    body = {"note": "second", "create_exception": second == "approve"}
    response = send(client, "post", url(pending.pk, second), admin_key, body)

    body = error(response, 409)
    assert body["code"] == "conflict"
    assert str(pending.pk) in body["message"] and "already" in body["message"]
    assert Escalation.objects.filter(pk=pending.pk).values().get() == before
    assert AuditEvent.objects.count() == events
    assert not PolicyException.objects.exists()


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"note": ["a", "list"]}, {"note"}),
        ({"note": True}, {"note"}),
        ({"note": {"text": "x"}}, {"note"}),
        ({"note": "x" * 2001}, {"note"}),
        ({"create_exception": "maybe"}, {"create_exception"}),
        ({"create_exception": [True]}, {"create_exception"}),
        ({"note": 7, "create_exception": "maybe"}, {"create_exception"}),
        (["not", "an", "object"], {"non_field_errors"}),
    ],
)
@pytest.mark.parametrize("verb", ["approve", "deny"])
def test_a_bad_decision_body_is_400_with_fields_and_decides_nothing(client, approver_key, pending, verb, body, fields):
    body_error = error(send(client, "post", url(pending.pk, verb), approver_key, body), 400)

    assert body_error["code"] == "invalid"
    assert body_error["fields"].keys() == fields
    assert status_of(pending) == EscalationStatus.PENDING
    assert not AuditEvent.objects.filter(action__startswith="escalation.").exists()


# --- bulk ----------------------------------------------------------------------------------------


def test_bulk_approve_reports_each_id(client, approver_key, agent):
    first = open_escalation(agent, tool="a")
    second = open_escalation(agent, tool="b")
    decided = open_escalation(agent, tool="c")
    escalation_deny(escalation=decided, by=BOB)
    ids = [first.pk, decided.pk, UNKNOWN_ID, second.pk, first.pk]

    response = send(client, "post", BULK, approver_key, {"ids": ids, "decision": "approve", "note": "batch"})

    assert response.status_code == 200, response.content
    data = response.json()
    assert data["decided"] == 2
    assert [(r["id"], r["result"]) for r in data["results"]] == [
        (first.pk, "approved"),
        (decided.pk, "conflict"),
        (UNKNOWN_ID, "not_found"),
        (second.pk, "approved"),
    ]
    assert "already denied" in data["results"][1]["message"]
    assert [status_of(e) for e in (first, second, decided)] == ["approved", "approved", "denied"]
    assert AuditEvent.objects.filter(action="escalation.approve", reason="batch").count() == 2


def test_bulk_approve_can_create_exceptions(client, approver_key, agent):
    first = open_escalation(agent, tool="a")
    second = open_escalation(agent, tool="b")

    response = send(
        client,
        "post",
        BULK,
        approver_key,
        {"ids": [first.pk, second.pk], "decision": "approve", "create_exception": True},
    )

    assert response.json()["decided"] == 2
    assert sorted(PolicyException.objects.values_list("escalation_id", flat=True)) == sorted([first.pk, second.pk])


def test_bulk_approve_with_exceptions_approves_calls_that_differ_only_in_arguments(client, approver_key, agent):
    v1 = open_escalation(agent, arguments={"path": "/srv/report.txt", "content": "v1"})
    v2 = open_escalation(agent, arguments={"path": "/srv/report.txt", "content": "v2"})

    response = send(
        client, "post", BULK, approver_key, {"ids": [v1.pk, v2.pk], "decision": "approve", "create_exception": True}
    )

    assert [r["result"] for r in response.json()["results"]] == ["approved", "approved"]
    assert [status_of(e) for e in (v1, v2)] == ["approved", "approved"]


def test_bulk_deny_decides_the_pending_ones(client, approver_key, agent):
    first = open_escalation(agent, tool="a")
    second = open_escalation(agent, tool="b")
    decided = open_escalation(agent, tool="c")
    escalation_deny(escalation=decided, by=BOB)

    response = send(
        client, "post", BULK, approver_key, {"ids": [first.pk, second.pk, decided.pk, UNKNOWN_ID], "decision": "deny"}
    )

    assert response.status_code == 200, response.content
    assert [status_of(e) for e in (first, second, decided)] == ["denied", "denied", "denied"]
    assert AuditEvent.objects.filter(action="escalation.deny", actor="api_key:approver-key").count() == 2
    assert [r["result"] for r in response.json()["results"]][2:] == ["conflict", "not_found"]


def test_bulk_deny_reports_denied_and_counts_them(client, approver_key, agent):
    first = open_escalation(agent, tool="a")
    second = open_escalation(agent, tool="b")

    response = send(client, "post", BULK, approver_key, {"ids": [first.pk, second.pk], "decision": "deny"})

    assert response.json() == {
        "decided": 2,
        "results": [{"id": first.pk, "result": "denied"}, {"id": second.pk, "result": "denied"}],
    }


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"ids": [], "decision": "deny"}, {"ids"}),
        ({"decision": "deny"}, {"ids"}),
        ({"ids": "1,2", "decision": "deny"}, {"ids"}),
        ({"ids": ["one"], "decision": "deny"}, {"ids.0"}),
        ({"ids": [0], "decision": "deny"}, {"ids.0"}),
        ({"ids": PENDING, "decision": "maybe"}, {"decision"}),
        ({"ids": PENDING}, {"decision"}),
        ({"ids": PENDING, "decision": "approve", "note": ["x"]}, {"note"}),
        ({"ids": PENDING, "decision": "approve", "create_exception": "sure"}, {"create_exception"}),
        ({"ids": PENDING, "decision": "deny", "create_exception": True}, {"create_exception"}),
        ([1, 2], {"non_field_errors"}),
    ],
)
def test_a_bad_bulk_body_is_400_with_fields_and_decides_nothing(client, approver_key, pending, body, fields):
    if isinstance(body, dict) and body.get("ids") == PENDING:
        body = body | {"ids": [pending.pk]}

    body_error = error(send(client, "post", BULK, approver_key, body), 400)

    assert body_error["code"] == "invalid"
    assert body_error["fields"].keys() == fields
    assert status_of(pending) == EscalationStatus.PENDING


# --- who may ---------------------------------------------------------------------------------------


def test_a_viewer_key_reads_but_may_not_decide(client, viewer_key, pending):
    assert send(client, "get", ESCALATIONS, viewer_key).status_code == 200
    assert send(client, "get", url(pending.pk), viewer_key).status_code == 200
    for path, body in (
        (url(pending.pk, "approve"), {"note": "x"}),
        (url(pending.pk, "deny"), {"note": "x"}),
        (BULK, {"ids": [pending.pk], "decision": "approve"}),
    ):
        assert error(send(client, "post", path, viewer_key, body), 403)["code"] == "permission_denied"
    assert status_of(pending) == EscalationStatus.PENDING


def test_an_outsider_person_may_do_nothing(client, outsider_user, pending):
    client.force_login(outsider_user)

    assert error(send(client, "get", ESCALATIONS), 403)["code"] == "permission_denied"
    assert error(send(client, "get", url(pending.pk)), 403)["code"] == "permission_denied"
    for path, body in (
        (url(pending.pk, "approve"), {}),
        (url(pending.pk, "deny"), {}),
        (BULK, {"ids": [pending.pk], "decision": "deny"}),
    ):
        assert error(send(client, "post", path, None, body), 403)["code"] == "permission_denied"
    assert status_of(pending) == EscalationStatus.PENDING


def test_a_viewer_person_reads_but_may_not_decide(client, viewer_user, pending):
    client.force_login(viewer_user)

    assert send(client, "get", f"{ESCALATIONS}?status=pending").json()["count"] == 1
    assert send(client, "post", url(pending.pk, "approve"), None, {}).status_code == 403


def test_without_credentials_it_is_401(client, pending):
    for method, path, body in (
        ("get", ESCALATIONS, None),
        ("get", url(pending.pk), None),
        ("post", url(pending.pk, "approve"), {}),
        ("post", url(pending.pk, "deny"), {}),
        ("post", BULK, {"ids": [pending.pk], "decision": "deny"}),
    ):
        response = send(client, method, path, None, body)
        assert error(response, 401)["code"] == "not_authenticated"
        assert response["WWW-Authenticate"] == "Bearer"
    assert status_of(pending) == EscalationStatus.PENDING


def test_a_revoked_key_is_401(client, approver_key, pending):
    api_key_revoke(key=ApiKey.objects.get(name="approver-key"), by=TEST_ACTOR)

    assert error(send(client, "get", ESCALATIONS, approver_key), 401)["code"] == "authentication_failed"
    assert send(client, "post", url(pending.pk, "approve"), approver_key, {}).status_code == 401
    assert status_of(pending) == EscalationStatus.PENDING


def test_an_agent_token_is_401_even_for_its_own_escalation(client, agent, pending):
    _token, raw = agent_token_issue(agent=agent, by=TEST_ACTOR)

    assert send(client, "get", ESCALATIONS, raw).status_code == 401
    response = send(client, "post", url(pending.pk, "approve"), raw, {})
    assert "only on /mcp/" in error(response, 401)["message"]
    assert status_of(pending) == EscalationStatus.PENDING


def test_an_unknown_key_is_401(client, pending):
    assert send(client, "post", url(pending.pk, "approve"), "bhv_key_nope", {}).status_code == 401


# --- the console's session path ------------------------------------------------------------------


@pytest.fixture
def csrf_client(approver_user):
    """A signed-in approver whose client checks CSRF as a browser would be checked.

    Django's test client skips CSRF by default, and DRF's SessionAuthentication honours that skip,
    so a plain `client` would not show that the session path demands a token.
    """
    client = Client(enforce_csrf_checks=True)
    client.force_login(approver_user)
    return client


def csrf_pair() -> tuple[str, str]:
    """(cookie secret, masked header token) as Django hands them to a browser."""
    request = RequestFactory().get("/")
    token = get_token(request)
    return request.META["CSRF_COOKIE"], token


def test_a_signed_in_approver_decides_with_a_csrf_token(csrf_client, pending):
    cookie, token = csrf_pair()
    csrf_client.cookies[settings.CSRF_COOKIE_NAME] = cookie

    response = send(
        csrf_client, "post", url(pending.pk, "approve"), None, {"note": "from the console"}, HTTP_X_CSRFTOKEN=token
    )

    assert response.status_code == 200, response.content
    assert (response.json()["status"], response.json()["decided_by"]) == ("approved", "person:bob-approver")
    assert AuditEvent.objects.get(action="escalation.approve").actor == "person:bob-approver"


def test_a_signed_in_approver_without_a_csrf_token_is_refused(csrf_client, pending):
    response = send(csrf_client, "post", url(pending.pk, "deny"), None, {"note": "forged"})

    assert error(response, 403)["code"] == "permission_denied"
    assert "CSRF" in response.json()["error"]["message"]
    assert status_of(pending) == EscalationStatus.PENDING
    assert send(csrf_client, "get", url(pending.pk)).status_code == 200  # reads need no token
