"""API keys over the API: issue (shown once), expiry, last use, revocation, and per-key throttling."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import ApiKey
from audit.models import AuditEvent
from tests.api_helpers import error, ok, send

pytestmark = pytest.mark.django_db
KEYS = "/api/v1/api-keys/"


def test_an_issued_key_works_at_once_and_is_shown_only_once(client, admin_key):
    issued = ok(send(client, "post", KEYS, admin_key, {"name": "siem", "role": "viewer"}), 201)

    assert issued["key"].startswith("bhv_key_") and issued["key"].startswith(issued["prefix"])
    assert ok(send(client, "get", "/api/v1/whoami/", issued["key"]))["role"] == "viewer"
    again = ok(send(client, "get", f"{KEYS}{issued['id']}/", admin_key))
    assert "key" not in again and again["usable"] is True
    assert issued["key"] not in str(list(AuditEvent.objects.values_list("details", flat=True)))


def test_last_use_is_recorded(client, admin_key):
    issued = ok(send(client, "post", KEYS, admin_key, {"name": "siem", "role": "viewer"}), 201)
    assert issued["last_used_at"] is None

    ok(send(client, "get", "/api/v1/whoami/", issued["key"]))

    assert ApiKey.objects.get(pk=issued["id"]).last_used_at is not None


def test_an_expiring_key_stops_working_at_its_expiry(client, admin_key):
    soon = (timezone.now() + timedelta(hours=1)).isoformat()
    issued = ok(send(client, "post", KEYS, admin_key, {"name": "temp", "role": "admin", "expires_at": soon}), 201)
    assert ok(send(client, "get", "/api/v1/whoami/", issued["key"]))["role"] == "admin"

    ApiKey.objects.filter(pk=issued["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))

    assert error(send(client, "get", "/api/v1/whoami/", issued["key"]), 401)["code"] == "authentication_failed"
    assert ok(send(client, "get", f"{KEYS}{issued['id']}/", admin_key))["usable"] is False


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"role": "viewer"}, {"name"}),
        ({"name": "x", "role": "root"}, {"role"}),
        ({"name": "x", "role": "viewer", "expires_at": "tomorrow"}, {"expires_at"}),
        ({"name": "x", "role": "viewer", "expires_at": "2001-01-01T00:00:00Z"}, {"expires_at"}),
    ],
)
def test_bad_key_bodies_are_400_and_issue_nothing(client, admin_key, body, fields):
    before = ApiKey.objects.count()
    assert set(error(send(client, "post", KEYS, admin_key, body), 400)["fields"]) == fields
    assert ApiKey.objects.count() == before


def test_revoking_a_key_stops_it_and_is_audited(client, admin_key):
    issued = ok(send(client, "post", KEYS, admin_key, {"name": "ci", "role": "approver"}), 201)

    assert send(client, "delete", f"{KEYS}{issued['id']}/", admin_key).status_code == 204

    assert error(send(client, "get", "/api/v1/whoami/", issued["key"]), 401)
    assert error(send(client, "delete", f"{KEYS}{issued['id']}/", admin_key), 409)["code"] == "conflict"
    assert AuditEvent.objects.filter(action="api_key.revoke").count() == 1


def test_each_key_has_its_own_rate_limit(client, admin_key, viewer_key, monkeypatch):
    from rest_framework.throttling import SimpleRateThrottle

    # DRF copies the rates onto the class at import; patching the class is what a changed setting does.
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", {"api": "3/minute"})
    for _ in range(3):
        ok(send(client, "get", "/api/v1/whoami/", admin_key))

    limited = send(client, "get", "/api/v1/whoami/", admin_key)

    assert error(limited, 429)["code"] == "throttled"
    assert 0 < int(limited["Retry-After"]) <= 60
    ok(send(client, "get", "/api/v1/whoami/", viewer_key))  # another key has its own budget
