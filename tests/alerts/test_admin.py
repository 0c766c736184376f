"""Django admin for alerts: approvers handle them, viewers only look."""

from __future__ import annotations

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse

from alerts.models import Alert, AlertNote, AlertSeverity, AlertStatus
from alerts.services import alert_acknowledge, alert_resolve
from behavry.actors import SYSTEM
from tests.factories import AgentFactory, AlertFactory

ALERTS_URL = reverse("admin:alerts_alert_changelist")

pytestmark = pytest.mark.django_db


def _login(client, request, persona: str):
    user = request.getfixturevalue(persona)
    client.force_login(user)
    return user


def _titles(response) -> list[str]:
    assert response.status_code == 200
    return sorted(a.title for a in response.context["cl"].result_list)


def _messages(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def _act(client, action: str, *alerts: Alert):
    return client.post(ALERTS_URL, {"action": action, "_selected_action": [a.pk for a in alerts]})


# --- changelist ----------------------------------------------------------------------------------


@pytest.mark.parametrize("persona", ["admin_user", "approver_user", "viewer_user"])
def test_it_lists_alerts_for_every_role(client, request, persona):
    AlertFactory(title="disk full", agent=AgentFactory())
    _login(client, request, persona)

    assert _titles(client.get(ALERTS_URL)) == ["disk full"]


def test_it_sends_an_outsider_to_the_admin_login(client, outsider_user):
    client.force_login(outsider_user)

    response = client.get(ALERTS_URL)

    assert response.status_code == 302
    assert response.url.startswith(reverse("admin:login"))


def test_it_searches_alerts_by_agent_name(client, viewer_user):
    AlertFactory(title="first", agent=AgentFactory(name="support-bot"))
    AlertFactory(title="second", agent=AgentFactory(name="build-bot"))
    client.force_login(viewer_user)

    assert _titles(client.get(ALERTS_URL, {"q": "support"})) == ["first"]


def test_it_filters_alerts_by_severity(client, viewer_user):
    AlertFactory(title="loud", severity=AlertSeverity.CRITICAL)
    AlertFactory(title="quiet", severity=AlertSeverity.INFO)
    client.force_login(viewer_user)

    assert _titles(client.get(ALERTS_URL, {"severity__exact": AlertSeverity.CRITICAL})) == ["loud"]


def test_it_filters_alerts_by_false_positive(client, viewer_user):
    alert_resolve(alert=AlertFactory(title="noise"), by=SYSTEM, false_positive=True)
    alert_resolve(alert=AlertFactory(title="real"), by=SYSTEM)
    client.force_login(viewer_user)

    assert _titles(client.get(ALERTS_URL, {"false_positive__exact": "1"})) == ["noise"]


# --- bulk actions --------------------------------------------------------------------------------


@pytest.mark.parametrize("persona", ["approver_user", "admin_user"])
def test_it_acknowledges_alerts_with_a_note(client, request, persona):
    user = _login(client, request, persona)
    first, second = AlertFactory(), AlertFactory()

    response = _act(client, "acknowledge_alerts", first, second)

    assert response.status_code == 302
    first.refresh_from_db()
    assert first.status == AlertStatus.ACKNOWLEDGED
    assert first.acknowledged_by == f"person:{user.username}"
    assert Alert.objects.filter(status=AlertStatus.ACKNOWLEDGED).count() == 2
    note = first.notes.get()
    assert (note.action, note.text, note.author) == (
        "acknowledge",
        "bulk acknowledge from admin",
        first.acknowledged_by,
    )
    assert _messages(response) == ["Acknowledged 2 alerts."]


def test_it_resolves_alerts_with_a_note(client, approver_user):
    client.force_login(approver_user)
    alert = alert_acknowledge(alert=AlertFactory(), by=SYSTEM)

    response = _act(client, "resolve_alerts", alert)

    alert.refresh_from_db()
    assert alert.status == AlertStatus.RESOLVED
    assert alert.resolved_by == "person:bob-approver"
    assert alert.false_positive is False
    assert list(alert.notes.values_list("action", "text")) == [("resolve", "bulk resolve from admin")]
    assert _messages(response) == ["Resolved 1 alerts."]


def test_it_resolves_alerts_as_false_positives(client, approver_user):
    client.force_login(approver_user)
    alert = AlertFactory()

    _act(client, "resolve_false_positive", alert)

    alert.refresh_from_db()
    assert alert.status == AlertStatus.RESOLVED
    assert alert.false_positive is True
    assert list(alert.notes.values_list("action", "text")) == [("resolve", "false positive (admin bulk)")]


def test_it_warns_about_alerts_that_are_not_open_and_acknowledges_the_rest(client, approver_user):
    client.force_login(approver_user)
    seen = alert_acknowledge(alert=AlertFactory(), by=SYSTEM)
    fresh = AlertFactory()

    response = _act(client, "acknowledge_alerts", seen, fresh)

    fresh.refresh_from_db()
    assert fresh.status == AlertStatus.ACKNOWLEDGED
    seen.refresh_from_db()
    assert seen.acknowledged_by == "system:behavry"
    assert not seen.notes.exists()
    assert sorted(_messages(response)) == ["Acknowledged 1 alerts.", f"Alert {seen.pk} is not open."]


def test_it_warns_when_resolving_a_resolved_alert(client, approver_user):
    client.force_login(approver_user)
    alert = alert_resolve(alert=AlertFactory(), by=SYSTEM)

    response = _act(client, "resolve_false_positive", alert)

    alert.refresh_from_db()
    assert alert.false_positive is False
    assert _messages(response) == [f"Alert {alert.pk} is already resolved."]


@pytest.mark.parametrize("action", ["acknowledge_alerts", "resolve_alerts", "resolve_false_positive"])
def test_it_refuses_alert_actions_to_a_viewer(client, viewer_user, action):
    client.force_login(viewer_user)
    alert = AlertFactory()

    response = _act(client, action, alert)

    assert response.status_code == 200  # the changelist again; the action is not offered
    alert.refresh_from_db()
    assert (alert.status, alert.false_positive) == (AlertStatus.OPEN, False)
    assert not AlertNote.objects.exists()


def test_it_refuses_alert_actions_to_an_outsider(client, outsider_user):
    client.force_login(outsider_user)
    alert = AlertFactory()

    response = _act(client, "resolve_alerts", alert)

    assert response.status_code == 302
    alert.refresh_from_db()
    assert alert.status == AlertStatus.OPEN


# --- pages ---------------------------------------------------------------------------------------


def test_it_offers_no_add_page_even_to_an_admin(client, admin_user):
    client.force_login(admin_user)

    assert client.get(reverse("admin:alerts_alert_add")).status_code == 403


def test_it_keeps_every_alert_field_read_only(client, approver_user):
    client.force_login(approver_user)
    alert = AlertFactory(title="disk full")

    client.post(reverse("admin:alerts_alert_change", args=[alert.pk]), {"title": "edited", "status": "resolved"})

    alert.refresh_from_db()
    assert (alert.title, alert.status) == ("disk full", AlertStatus.OPEN)


def test_it_never_lets_anyone_delete_an_alert(client, admin_user):
    client.force_login(admin_user)
    alert = AlertFactory()

    page = client.get(reverse("admin:alerts_alert_change", args=[alert.pk]))
    response = client.post(reverse("admin:alerts_alert_delete", args=[alert.pk]), {"post": "yes"})

    assert page.context["has_delete_permission"] is False
    assert response.status_code == 403
    assert Alert.objects.filter(pk=alert.pk).exists()


def test_it_lets_a_viewer_open_an_alert_without_a_save_button(client, viewer_user):
    client.force_login(viewer_user)
    alert = AlertFactory()

    page = client.get(reverse("admin:alerts_alert_change", args=[alert.pk]))

    assert page.status_code == 200
    assert page.context["has_change_permission"] is False
    assert page.context["has_delete_permission"] is False


def test_it_shows_an_alerts_notes_on_its_change_page(client, approver_user):
    client.force_login(approver_user)
    alert = alert_acknowledge(alert=AlertFactory(), by=SYSTEM, note="looking into it")

    page = client.get(reverse("admin:alerts_alert_change", args=[alert.pk]))

    assert "looking into it" in page.text
