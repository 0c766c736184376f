"""REST API for alerts: list with filters, acknowledge with a note, resolve (false positives too)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from alerts.models import Alert, AlertStatus
from audit.models import AuditEvent
from tests.api_helpers import error, ok, send
from tests.factories import AgentFactory, AlertFactory

pytestmark = pytest.mark.django_db
ALERTS = "/api/v1/alerts/"


def test_list_has_the_design_fields_and_filters(client, viewer_key):
    agent = AgentFactory()
    AlertFactory(agent=agent, severity="critical", type="dlp_violation", title="secret in args")
    AlertFactory(severity="info", title="noise")

    page = ok(send(client, "get", f"{ALERTS}?severity=critical&agent={agent.pk}", viewer_key))

    assert [a["title"] for a in page["results"]] == ["secret in args"]
    assert {"id", "agent", "type", "severity", "status", "title", "details", "created_at", "notes"} <= set(
        page["results"][0]
    )
    assert error(send(client, "get", f"{ALERTS}?severity=dire", viewer_key), 400)["fields"].keys() == {"severity"}


def test_since_with_an_offset_postgresql_cannot_store_filters_by_the_instant(client, viewer_key):
    old = AlertFactory(title="old")
    new = AlertFactory(title="new")
    Alert.objects.filter(pk=old.pk).update(created_at=datetime(2026, 3, 1, 9, tzinfo=UTC))
    Alert.objects.filter(pk=new.pk).update(created_at=datetime(2026, 3, 1, 11, tzinfo=UTC))

    # 05:30 on the 2nd at +18:41 is 10:49 UTC on the 1st (PostgreSQL refuses offsets past 15:59).
    page = ok(send(client, "get", f"{ALERTS}?since=2026-03-02T05:30:00%2B18:41", viewer_key))

    assert [a["title"] for a in page["results"]] == ["new"]
    too_early = send(client, "get", f"{ALERTS}?since=0001-01-01T00:00:00%2B18:00", viewer_key)
    assert error(too_early, 400)["fields"].keys() == {"since"}


def test_acknowledge_needs_a_note_and_records_it(client, approver_key):
    alert = AlertFactory()

    assert error(send(client, "post", f"{ALERTS}{alert.pk}/acknowledge/", approver_key, {}), 400)["fields"] == {
        "note": ["This field is required."]
    }
    assert Alert.objects.get().status == AlertStatus.OPEN

    body = ok(send(client, "post", f"{ALERTS}{alert.pk}/acknowledge/", approver_key, {"note": "looking"}))

    assert (body["status"], body["acknowledged_by"]) == ("acknowledged", "api_key:approver-key")
    assert [(n["action"], n["text"]) for n in body["notes"]] == [("acknowledge", "looking")]
    assert error(send(client, "post", f"{ALERTS}{alert.pk}/acknowledge/", approver_key, {"note": "again"}), 409)


def test_resolve_as_false_positive_then_a_second_resolve_is_409(client, approver_key):
    alert = AlertFactory()

    body = ok(
        send(client, "post", f"{ALERTS}{alert.pk}/resolve/", approver_key, {"note": "test", "false_positive": True})
    )

    assert (body["status"], body["false_positive"]) == ("resolved", True)
    assert AuditEvent.objects.get(action="alert.resolve").details == {"false_positive": True}
    assert error(send(client, "post", f"{ALERTS}{alert.pk}/resolve/", approver_key, {}), 409)["code"] == "conflict"


def test_a_bad_resolve_body_is_400_and_resolves_nothing(client, approver_key):
    alert = AlertFactory()
    err = error(send(client, "post", f"{ALERTS}{alert.pk}/resolve/", approver_key, {"false_positive": "sure"}), 400)
    assert err["fields"].keys() == {"false_positive"}
    assert Alert.objects.get().status == AlertStatus.OPEN
