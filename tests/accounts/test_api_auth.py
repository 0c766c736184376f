"""API authentication: API keys and sessions work, agent tokens never do, outsiders are refused."""

import pytest

from accounts.models import ApiKey
from agents.services import agent_token_issue
from tests.conftest import TEST_ACTOR
from tests.factories import AgentFactory

pytestmark = pytest.mark.django_db
URL = "/api/v1/whoami/"


def bearer(raw: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def test_it_names_the_key_and_its_role(client, admin_key):
    response = client.get(URL, **bearer(admin_key))
    assert response.status_code == 200
    assert response.json() == {
        "actor": {"kind": "api_key", "id": response.json()["actor"]["id"], "name": "admin-key"},
        "role": "admin",
    }


def test_no_credentials_is_401_with_bearer_challenge(client):
    response = client.get(URL)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"
    assert response.json() == {
        "error": {"code": "not_authenticated", "message": "Authentication credentials were not provided.", "fields": {}}
    }


def test_a_bad_or_revoked_key_is_401(client, viewer_key):
    assert client.get(URL, **bearer("bhv_key_nope")).status_code == 401
    ApiKey.objects.update(revoked_at="2026-01-01T00:00:00Z")
    assert client.get(URL, **bearer(viewer_key)).status_code == 401


def test_an_agent_token_is_refused_on_the_api(client):
    _token, raw = agent_token_issue(agent=AgentFactory(), by=TEST_ACTOR)
    response = client.get(URL, **bearer(raw))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "authentication_failed"
    assert "only on /mcp/" in response.json()["error"]["message"]


def test_a_signed_in_person_with_a_role_is_accepted(client, viewer_user):
    client.force_login(viewer_user)
    assert client.get(URL).json()["role"] == "viewer"


def test_an_outsider_person_is_403(client, outsider_user):
    client.force_login(outsider_user)
    response = client.get(URL)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"
