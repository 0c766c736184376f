"""The whole REST API against its own OpenAPI schema: who may call what, and what every error looks like.

Operations are read from the generated schema, so an endpoint added later is covered without a new
test; `REQUIRED_ROLE` must name it, or `test_every_operation_has_a_declared_role` fails.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator

from accounts.models import ApiKey
from accounts.services import api_key_create
from tests.conftest import TEST_ACTOR

pytestmark = pytest.mark.django_db

# The role each operation needs, by (method, path). Reads need viewer; writes need admin; deciding
# escalations and handling alerts need approver; API keys are admin-only even to list.
ADMIN_READS = {"/api/v1/api-keys/", "/api/v1/api-keys/{id}/"}
APPROVER_WRITES = {
    "/api/v1/escalations/{id}/approve/",
    "/api/v1/escalations/{id}/deny/",
    "/api/v1/escalations/bulk/",
    "/api/v1/alerts/{id}/acknowledge/",
    "/api/v1/alerts/{id}/resolve/",
}
# Read-only queries sent as POST: they change nothing, so a viewer may run them.
VIEWER_POSTS = {"/api/v1/policies/simulate/", "/api/v1/policies/replay/"}


def _schema() -> dict:
    return SchemaGenerator().get_schema(request=None, public=True)


def _operations() -> list[tuple[str, str]]:
    return sorted(
        (method.upper(), path)
        for path, item in _schema()["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    )


OPERATIONS = _operations()


def required_role(method: str, path: str) -> str:
    if path in ADMIN_READS:
        return "admin"
    if method == "GET" or path in VIEWER_POSTS:
        return "viewer"
    if path in APPROVER_WRITES:
        return "approver"
    return "admin"


def concrete(path: str) -> str:
    # Permissions are checked before any object is looked up, so any id shows the auth behaviour.
    return path.replace("{id}", "1").replace("{token_id}", "1")


def call(client, method: str, path: str, key: str | None = None):
    extra = {"HTTP_AUTHORIZATION": f"Bearer {key}"} if key else {}
    if method in ("POST", "PUT", "PATCH"):
        return client.generic(method, concrete(path), json.dumps({}), content_type="application/json", **extra)
    return client.generic(method, concrete(path), **extra)


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, (response.status_code, response.content[:300])
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "fields"}
    assert body["error"]["message"]
    if code:
        assert body["error"]["code"] == code
    return body["error"]


def test_the_schema_lists_every_resource_of_the_design():
    paths = {path for _method, path in OPERATIONS}
    for resource in ("servers", "agents", "policies", "exceptions", "escalations", "alerts", "audit-events"):
        assert f"/api/v1/{resource}/" in paths
    assert {
        "/api/v1/agents/{id}/suspend/",
        "/api/v1/agents/{id}/reactivate/",
        "/api/v1/agents/{id}/tokens/",
        "/api/v1/servers/{id}/tools/",
        "/api/v1/policies/simulate/",
        "/api/v1/escalations/{id}/approve/",
        "/api/v1/alerts/{id}/acknowledge/",
        "/api/v1/audit-events/verify/",
    } <= paths


def test_every_operation_has_a_summary_a_response_shape_and_its_error_responses():
    schema = _schema()
    assert schema["components"]["securitySchemes"]["apiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "bhv_key_…",
        "description": schema["components"]["securitySchemes"]["apiKey"]["description"],
    }
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            where = f"{method.upper()} {path}"
            assert operation.get("summary"), where
            responses = operation["responses"]
            success = [code for code in responses if code.startswith("2")]
            assert success, where
            if method != "delete" and "204" not in responses:
                assert responses[success[0]].get("content"), f"{where}: no response body documented"
            for code in ("401", "403", "429"):
                ref = responses[code]["content"]["application/json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/Error", where
            if method in ("post", "put", "patch") and operation.get("requestBody"):
                assert "400" in responses, where
            if "{id}" in path:
                assert "404" in responses, where


def test_every_operation_has_a_declared_role():
    # Fails when someone adds an endpoint whose permission this table does not explain.
    for method, path in OPERATIONS:
        assert required_role(method, path) in ("viewer", "approver", "admin"), (method, path)


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_no_credentials_is_401(client, method, path):
    response = call(client, method, path)
    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_a_revoked_key_is_401(client, method, path):
    key, raw = api_key_create(name="revoked", role="admin", by=TEST_ACTOR)
    ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
    assert_error(call(client, method, path, raw), 401, "authentication_failed")


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_an_expired_key_is_401(client, method, path):
    key, raw = api_key_create(name="expiring", role="admin", by=TEST_ACTOR)
    ApiKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert_error(call(client, method, path, raw), 401, "authentication_failed")


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_an_outsider_is_403(client, outsider_user, method, path):
    """The outsider is the strongest principal that still lacks the role: a key one rank too low, or,
    where viewer suffices, a signed-in person with no Behavry role at all."""
    needed = required_role(method, path)
    if needed == "viewer":
        client.force_login(outsider_user)
        response = call(client, method, path)
    else:
        below = {"approver": "viewer", "admin": "approver"}[needed]
        _key, raw = api_key_create(name=f"{below}-outsider", role=below, by=TEST_ACTOR)
        response = call(client, method, path, raw)
    assert_error(response, 403, "permission_denied")


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_the_needed_role_gets_past_authorisation(client, method, path):
    """With exactly the needed role the answer is never 401/403 (it may be 404 for id 1, or 400)."""
    _key, raw = api_key_create(name="just-enough", role=required_role(method, path), by=TEST_ACTOR)
    response = call(client, method, path, raw)
    assert response.status_code not in (401, 403, 405, 500), (response.status_code, response.content[:300])


def test_an_agent_token_never_works_on_the_api(client):
    from agents.services import agent_token_issue
    from tests.factories import AgentFactory

    _token, raw = agent_token_issue(agent=AgentFactory(), by=TEST_ACTOR)
    for method, path in OPERATIONS:
        assert_error(call(client, method, path, raw), 401, "authentication_failed")


def test_unknown_api_paths_and_non_numeric_ids_are_json_404(client, admin_key):
    for path in ("/api/v1/nope/", "/api/v1/agents/abc/", "/api/v1/agents/1.5/", "/api/v1/agents/%0A/"):
        assert_error(call(client, "GET", path, admin_key), 404, "not_found")
    assert_error(call(client, "POST", "/api/v1/nope/", admin_key), 404, "not_found")


def test_a_form_or_multipart_body_is_415(client, admin_key):
    response = client.post("/api/v1/roles/", {"name": "x"}, HTTP_AUTHORIZATION=f"Bearer {admin_key}")
    assert_error(response, 415, "unsupported_media_type")


def test_a_huge_offset_is_400_not_a_database_error(client, admin_key):
    response = client.get("/api/v1/agents/?offset=99999999999999999999999", HTTP_AUTHORIZATION=f"Bearer {admin_key}")
    assert assert_error(response, 400, "invalid")["fields"] == {"offset": ["At most 1000000000."]}


@pytest.mark.parametrize(
    "raw",
    [
        '{"name": "a\\u0000b"}',
        '{"name": "\\ud800"}',
        '{"na\\u0000me": "x"}',
        '{"name": "x", "roles": ["ok", ["\\udfff"]]}',
        "[" * 70 + "]" * 70,
    ],
)
def test_text_no_database_can_store_is_400_before_anything_happens(client, admin_key, raw):
    response = client.generic(
        "POST", "/api/v1/roles/", raw, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {admin_key}"
    )
    assert assert_error(response, 400, "parse_error")["message"]
    from agents.models import Role

    assert not Role.objects.exists()


def test_malformed_json_is_400(client, admin_key):
    response = client.generic(
        "POST", "/api/v1/roles/", "{nope", content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {admin_key}"
    )
    assert_error(response, 400, "parse_error")


def test_a_bug_on_the_api_is_a_json_500_in_the_error_shape(client, admin_key, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("behavry.views.role_of", broken)
    client.raise_request_exception = False
    response = client.get("/api/v1/whoami/", HTTP_AUTHORIZATION=f"Bearer {admin_key}")
    assert_error(response, 500, "server_error")
