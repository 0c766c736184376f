"""REST API for upstream servers and the tool catalog."""

from __future__ import annotations

import pytest

from audit.models import AuditEvent
from proxy.models import Tool, UpstreamServer
from proxy.services import tool_catalog_sync
from tests.api_helpers import error, ok, send
from tests.factories import UpstreamServerFactory

pytestmark = pytest.mark.django_db
SERVERS = "/api/v1/servers/"


def test_register_a_server_with_the_design_body_and_never_echo_its_credential(client, admin_key):
    body = {"slug": "files", "name": "File server", "url": "http://127.0.0.1:9/mcp"}

    server = ok(send(client, "post", SERVERS, admin_key, body | {"auth_header_value": "Bearer upstream-secret"}), 201)

    assert {k: server[k] for k in ("slug", "name", "url", "enabled", "has_credentials", "era")} == {
        **body,
        "enabled": True,
        "has_credentials": True,
        "era": "unknown",
    }
    assert "auth_header_value" not in server
    assert UpstreamServer.objects.get().auth_header_value == "Bearer upstream-secret"
    listed = send(client, "get", SERVERS, admin_key).content.decode()
    assert "upstream-secret" not in listed
    event = AuditEvent.objects.get(action="server.create")
    assert "upstream-secret" not in str(event.details) and event.details["auth_header_value"] == "(changed)"


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"name": "n", "url": "http://files-mcp:8080/mcp"}, {"slug"}),
        ({"slug": "has space", "name": "n", "url": "http://files-mcp:8080/mcp"}, {"slug"}),
        ({"slug": "s", "name": "n", "url": "ftp://files-mcp/mcp"}, {"url"}),
        ({"slug": "s", "name": "n", "url": "not a url"}, {"url"}),
        ({"slug": "s", "name": "n", "url": "http://host:99999/mcp"}, {"url"}),
        ({"slug": "s", "name": "n", "url": "http:///mcp"}, {"url"}),
        ({"slug": "s", "name": "n", "url": "http://files-mcp:8080/mcp", "read_timeout": 0}, {"read_timeout"}),
        (
            {"slug": "s", "name": "n", "url": "http://files-mcp:8080/mcp", "auth_header_name": "X Bad:"},
            {"auth_header_name"},
        ),
        ({"slug": "s", "name": "n", "url": "http://files-mcp:8080/mcp", "enabled": "perhaps"}, {"enabled"}),
    ],
)
def test_bad_server_bodies_are_400_and_store_nothing(client, admin_key, body, fields):
    err = error(send(client, "post", SERVERS, admin_key, body), 400)
    assert err["code"] == "invalid" and set(err["fields"]) == fields
    assert not UpstreamServer.objects.exists()


def test_a_taken_slug_is_a_field_error(client, admin_key):
    UpstreamServerFactory(slug="files")
    body = {"slug": "files", "name": "n", "url": "http://127.0.0.1:9/mcp"}
    assert error(send(client, "post", SERVERS, admin_key, body), 400)["fields"] == {"slug": ["Already taken."]}


def test_patch_changes_settings_but_not_the_slug(client, admin_key):
    server = UpstreamServerFactory(slug="files")

    assert ok(send(client, "patch", f"{SERVERS}{server.pk}/", admin_key, {"read_timeout": 30}))["read_timeout"] == 30
    assert error(send(client, "patch", f"{SERVERS}{server.pk}/", admin_key, {"slug": "other"}), 400)["fields"] == {
        "slug": ["The slug cannot be changed; agents connect with it."]
    }
    assert UpstreamServer.objects.get().slug == "files"


def test_delete_needs_a_disabled_server(client, admin_key):
    server = UpstreamServerFactory()
    assert error(send(client, "delete", f"{SERVERS}{server.pk}/", admin_key), 409)["code"] == "conflict"

    ok(send(client, "patch", f"{SERVERS}{server.pk}/", admin_key, {"enabled": False}))
    assert send(client, "delete", f"{SERVERS}{server.pk}/", admin_key).status_code == 204
    assert not UpstreamServer.objects.exists()
    assert AuditEvent.objects.filter(action="server.delete").count() == 1


def test_the_catalog_lists_tools_and_an_admin_corrects_the_verb(client, admin_key, viewer_key):
    server = UpstreamServerFactory(slug="files")
    tool_catalog_sync(
        server=server,
        definitions=[
            {"name": "read_file", "inputSchema": {"type": "object", "properties": {"path": {"type": "string"}}}},
            {"name": "frobnicate", "inputSchema": {"type": "object"}},
        ],
    )

    catalog = ok(send(client, "get", f"{SERVERS}{server.pk}/tools/", viewer_key))

    assert [(t["name"], t["action"], t["resource_argument"]) for t in catalog] == [
        ("frobnicate", "other", ""),
        ("read_file", "read", "path"),
    ]
    tool = Tool.objects.get(name="frobnicate")
    changed = ok(send(client, "patch", f"/api/v1/tools/{tool.pk}/", admin_key, {"action_override": "delete"}))
    assert (changed["default_action"], changed["action"]) == ("other", "delete")
    assert AuditEvent.objects.get(action="tool.update").details["action_override"] == "delete"
    assert error(send(client, "patch", f"/api/v1/tools/{tool.pk}/", admin_key, {"action_override": "nuke"}), 400)[
        "fields"
    ].keys() == {"action_override"}
    assert [t["name"] for t in ok(send(client, "get", "/api/v1/tools/?server__slug=files", viewer_key))["results"]] == [
        "frobnicate",
        "read_file",
    ]


def test_a_service_name_without_dots_is_a_valid_upstream_host(client, admin_key):
    # Django's URLValidator refuses these; Docker and Kubernetes service names look exactly like this.
    body = {"slug": "files", "name": "n", "url": "http://files-mcp:8080/mcp"}
    assert ok(send(client, "post", SERVERS, admin_key, body), 201)["url"] == "http://files-mcp:8080/mcp"
