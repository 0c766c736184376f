"""Django admin for policies and exceptions: read-only rows, bulk enable/disable and revoke through services."""

from __future__ import annotations

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse

from audit.models import AuditEvent
from policies.models import Policy, PolicyException
from policies.services import exception_create, exception_revoke, policy_create
from tests.conftest import TEST_ACTOR
from tests.factories import AgentFactory

pytestmark = pytest.mark.django_db

POLICIES_URL = reverse("admin:policies_policy_changelist")
EXCEPTIONS_URL = reverse("admin:policies_policyexception_changelist")


def _messages(response) -> list[str]:
    return sorted(str(m) for m in get_messages(response.wsgi_request))


def _policies(*names: str) -> list[Policy]:
    return [policy_create(data={"name": name, "effect": "allow"}, by=TEST_ACTOR) for name in names]


@pytest.mark.parametrize("persona", ["admin_user", "viewer_user"])
def test_it_lists_policies_and_exceptions_and_offers_no_add_page(client, request, persona):
    [policy] = _policies("Read files")
    exception_create(agent=AgentFactory(), server="fs", tool="delete_file", by=TEST_ACTOR)
    client.force_login(request.getfixturevalue(persona))

    assert list(client.get(POLICIES_URL).context["cl"].result_list) == [policy]
    assert client.get(EXCEPTIONS_URL).context["cl"].result_list.count() == 1
    assert client.get(reverse("admin:policies_policy_add")).status_code == 403
    assert client.get(reverse("admin:policies_policyexception_add")).status_code == 403


def test_an_outsider_cannot_open_the_policy_admin(client, outsider_user):
    client.force_login(outsider_user)
    assert client.get(POLICIES_URL).status_code == 302  # to the admin login


def test_an_admin_disables_and_enables_policies_in_bulk(client, admin_user):
    first, second = _policies("Read files", "Write files")
    client.force_login(admin_user)

    response = client.post(POLICIES_URL, {"action": "disable_policies", "_selected_action": [first.pk, second.pk]})

    assert response.status_code == 302
    assert set(Policy.objects.values_list("enabled", flat=True)) == {False}
    assert _messages(response) == ["Disabled 2 policies."]
    updates = AuditEvent.objects.filter(action="policy.update", actor="person:alice-admin")
    assert updates.count() == 2

    client.post(POLICIES_URL, {"action": "enable_policies", "_selected_action": [first.pk]})
    first.refresh_from_db()
    assert first.enabled is True


@pytest.mark.parametrize("persona", ["viewer_user", "approver_user"])
def test_a_non_admin_cannot_disable_policies(client, request, persona):
    [policy] = _policies("Read files")
    client.force_login(request.getfixturevalue(persona))
    client.post(POLICIES_URL, {"action": "disable_policies", "_selected_action": [policy.pk]})
    policy.refresh_from_db()
    assert policy.enabled is True


def test_an_admin_revokes_exceptions_and_is_told_about_already_revoked_ones(client, admin_user):
    agent = AgentFactory()
    live = exception_create(agent=agent, server="fs", tool="delete_file", by=TEST_ACTOR)
    gone = exception_revoke(
        exception=exception_create(agent=agent, server="fs", tool="rm", by=TEST_ACTOR), by=TEST_ACTOR
    )
    client.force_login(admin_user)

    response = client.post(EXCEPTIONS_URL, {"action": "revoke_exceptions", "_selected_action": [live.pk, gone.pk]})

    live.refresh_from_db()
    assert live.revoked_by == "person:alice-admin"
    assert _messages(response) == [f"Exception {gone.pk} is already revoked.", "Revoked 1 policy exceptions."]
    assert PolicyException.objects.count() == 2


def test_a_viewer_cannot_revoke_exceptions(client, viewer_user):
    exception = exception_create(agent=AgentFactory(), server="fs", tool="delete_file", by=TEST_ACTOR)
    client.force_login(viewer_user)
    client.post(EXCEPTIONS_URL, {"action": "revoke_exceptions", "_selected_action": [exception.pk]})
    exception.refresh_from_db()
    assert exception.revoked_at is None
