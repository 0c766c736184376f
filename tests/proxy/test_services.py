import logging

import pytest

from behavry.errors import InvalidInput
from proxy.catalog import tool_definition_hash
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


GOOD_BEFORE = {"name": "read_file", "inputSchema": {"properties": {"path": {}}}}
GOOD_AFTER = {"name": "list_dir", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": True}}


def sync_between_good_tools(server, odd, caplog):
    with caplog.at_level(logging.WARNING, logger="behavry.proxy.catalog"):
        return tool_catalog_sync(server=server, definitions=[GOOD_BEFORE, odd, GOOD_AFTER])


@pytest.mark.parametrize(
    ("odd", "shown", "reason"),
    [
        ({"name": "get_" + "x" * 125}, "'get_" + "x" * 56 + "'...", "longer than 128 characters"),
        ({"name": 7}, "(int)", "not a string"),
        ({"name": ["get_odd"]}, "(list)", "not a string"),
        ({"name": {"get": "odd"}}, "(dict)", "not a string"),
        ({"name": ""}, "''", "no name"),
        ("get_odd", "(str)", "not an object"),
        ({"title": "nameless"}, "(NoneType)", "no name"),
        ({"name": "get\x00odd"}, "'get\\x00odd'", "U+0000"),
        ({"name": "get_odd", "description": "before\x00after"}, "'get_odd'", "U+0000"),
        ({"name": "get_odd", "inputSchema": {"properties": {"a\x00": {}}}}, "'get_odd'", "U+0000"),
        ({"name": "get_odd", "annotations": {"title": "\ud800"}}, "'get_odd'", "unpaired surrogate"),
        ({"name": "get_odd", "inputSchema": {"maximum": float("nan")}}, "'get_odd'", "NaN or an infinite"),
        ({"name": "get_odd", "inputSchema": {"minimum": float("-inf")}}, "'get_odd'", "NaN or an infinite"),
    ],
)
def test_a_tool_the_catalog_cannot_hold_is_left_out_and_logged_and_the_others_are_kept(odd, shown, reason, caplog):
    server = UpstreamServerFactory(slug="odd-upstream")
    tools = sync_between_good_tools(server, odd, caplog)
    assert [t.name for t in tools] == ["read_file", "list_dir"]
    assert sorted(Tool.objects.filter(server=server).values_list("name", flat=True)) == ["list_dir", "read_file"]
    (record,) = [r for r in caplog.records if r.name == "behavry.proxy.catalog"]
    assert record.levelno == logging.WARNING
    assert f"Upstream odd-upstream lists tool {shown}, left out" in record.getMessage()
    assert reason in record.getMessage()


def test_a_name_of_exactly_the_column_length_is_kept():
    server = UpstreamServerFactory()
    (tool,) = tool_catalog_sync(server=server, definitions=[{"name": "get_" + "x" * 124}])
    tool.refresh_from_db()
    assert len(tool.name) == 128


def test_malformed_parts_count_as_empty_but_the_hash_still_covers_what_was_sent(caplog):
    server = UpstreamServerFactory()
    odd = {
        "name": "frobnicate",
        "title": 5,
        "description": ["not", "text"],
        "inputSchema": ["type", "object"],
        "outputSchema": "text",
        "annotations": "destructiveHint",
    }
    tools = sync_between_good_tools(server, odd, caplog)
    assert [t.name for t in tools] == ["read_file", "frobnicate", "list_dir"]
    tool = Tool.objects.get(server=server, name="frobnicate")
    assert (tool.title, tool.description, tool.input_schema, tool.annotations) == ("", "", {}, {})
    assert (tool.action, tool.resource_argument) == (ToolAction.OTHER, "")
    assert tool.definition_hash == tool_definition_hash(odd)
    first_hash = tool.definition_hash

    tool_catalog_sync(server=server, definitions=[{**odd, "annotations": "readOnlyHint"}])
    tool.refresh_from_db()
    assert tool.definition_hash != first_hash  # the change is seen though both count as {}
    assert not [r for r in caplog.records if r.name == "behavry.proxy.catalog"]


def test_a_catalogued_tool_whose_new_definition_cannot_be_held_is_not_returned(caplog):
    """The caller offers agents only the tools the sync returned, not every catalogued name: a
    tool that turns bad keeps its old row, and the old row's classification must not vouch for it."""
    server = UpstreamServerFactory()
    tool_catalog_sync(server=server, definitions=[GOOD_BEFORE, {"name": "get_odd"}, GOOD_AFTER])
    tools = sync_between_good_tools(server, {"name": "get_odd", "description": "\x00"}, caplog)
    assert [t.name for t in tools] == ["read_file", "list_dir"]
    assert Tool.objects.filter(server=server, name="get_odd").exists()


def test_an_unpaired_surrogate_in_a_part_the_catalog_does_not_store_only_reaches_the_hash(caplog):
    server = UpstreamServerFactory()
    odd = {"name": "get_odd", "outputSchema": {"title": "\udc80"}}
    tools = sync_between_good_tools(server, odd, caplog)
    assert [t.name for t in tools] == ["read_file", "get_odd", "list_dir"]
    assert tools[1].definition_hash == tool_definition_hash(odd)
