import pytest

from behavry.errors import InvalidInput
from proxy.models import Tool, ToolAction
from proxy.services import tool_catalog_sync, tool_update, upstream_server_create, upstream_server_update
from tests.conftest import TEST_ACTOR
from tests.factories import UpstreamServerFactory

pytestmark = pytest.mark.django_db


def test_it_registers_an_upstream_and_validates_it():
    server = upstream_server_create(slug="files", name="Files", url="http://127.0.0.1:9000/mcp", by=TEST_ACTOR)
    assert server.enabled and server.era == "unknown"
    with pytest.raises(InvalidInput) as exc:
        upstream_server_create(slug="files", name="Dup", url="http://127.0.0.1:9000/mcp", by=TEST_ACTOR)
    assert "slug" in exc.value.fields
    with pytest.raises(InvalidInput) as exc:
        upstream_server_create(slug="bad", name="Bad", url="not a url", by=TEST_ACTOR)
    assert "url" in exc.value.fields
    with pytest.raises(InvalidInput) as exc:
        upstream_server_create(slug="bad slug!", name="Bad", url="http://x/mcp", by=TEST_ACTOR)
    assert "slug" in exc.value.fields


def test_it_updates_credentials_without_touching_the_slug():
    server = UpstreamServerFactory()
    upstream_server_update(server=server, auth_header_value="Bearer upstream-secret", by=TEST_ACTOR)
    server.refresh_from_db()
    assert server.has_credentials
    with pytest.raises(InvalidInput):
        upstream_server_update(server=server, slug="renamed", by=TEST_ACTOR)


def test_it_syncs_the_catalog_and_keeps_admin_overrides():
    server = UpstreamServerFactory()
    definitions = [
        {
            "name": "read_file",
            "description": "Read",
            "inputSchema": {"properties": {"path": {}}},
            "annotations": {"readOnlyHint": True},
        },
        {"name": "purge", "description": "Purge", "inputSchema": {}},
        {"description": "nameless entries are ignored"},
    ]
    tools = tool_catalog_sync(server=server, definitions=definitions)
    assert [t.name for t in tools] == ["read_file", "purge"]
    read = Tool.objects.get(server=server, name="read_file")
    assert (read.action, read.resource_argument) == (ToolAction.READ, "path")
    first_hash = read.definition_hash

    tool_update(tool=read, action_override=ToolAction.WRITE, by=TEST_ACTOR)
    definitions[0]["description"] = "Read (changed)"
    tool_catalog_sync(server=server, definitions=definitions)
    read.refresh_from_db()
    assert read.action == ToolAction.WRITE  # override survives
    assert read.default_action == ToolAction.READ
    assert read.definition_hash != first_hash


def test_it_refuses_an_unknown_action_override():
    server = UpstreamServerFactory()
    (tool,) = tool_catalog_sync(server=server, definitions=[{"name": "x"}])
    with pytest.raises(InvalidInput):
        tool_update(tool=tool, action_override="launch", by=TEST_ACTOR)
