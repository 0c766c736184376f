"""Pure pieces of proxy/handlers.py: how a failure and a policy target look per method."""

import pytest

from proxy import handlers
from proxy import jsonrpc as rpc


def request(method, params, era="modern"):
    message = {"jsonrpc": "2.0", "id": 9, "method": method, "params": params}
    return handlers.McpRequest(identity=None, target=None, era=era, protocol_version="", message=message)


def test_a_tool_failure_is_an_is_error_result_and_a_read_failure_a_json_rpc_error():
    tool = handlers._failure(request("tools/call", {"name": "echo"}), "upstream broke")
    read = handlers._failure(request("prompts/get", {"name": "p"}), "upstream broke")
    assert tool["id"] == 9 and tool["result"]["isError"] is True
    assert tool["result"]["content"][0]["text"] == "upstream broke"
    assert read == {"jsonrpc": "2.0", "id": 9, "error": {"code": rpc.UPSTREAM_FAILED, "message": "upstream broke"}}


@pytest.mark.parametrize(
    ("method", "params", "target"),
    [
        ("tools/call", {"name": "echo", "arguments": {"a": 1}}, ("echo", {"a": 1})),
        ("prompts/get", {"name": "notes", "arguments": {"v": "2"}}, ("prompt:notes", {"v": "2"})),
        ("resources/read", {"uri": "demo://readme"}, ("resource:demo://readme", {})),
        ("tools/call", {"name": "echo", "arguments": ["not", "an", "object"]}, ("echo", {})),
    ],
)
def test_the_policy_target_names_reads_like_tools(method, params, target):
    assert handlers._policy_target(request(method, params)) == target


def test_a_read_decided_for_one_agent_is_never_offered_to_a_shared_cache():
    """An upstream's cacheScope "public" would let a client cache shared between principals serve
    the content to an agent that policy refuses it (no decision, no audit)."""
    answer = {"jsonrpc": "2.0", "id": 9, "result": {"contents": [], "ttlMs": 60_000, "cacheScope": "public"}}
    shaped = handlers.shape_result(request("resources/read", {"uri": "demo://public"}), answer)["result"]
    assert shaped["cacheScope"] == "private" and shaped["ttlMs"] == 60_000


def test_a_2025_agent_gets_no_2026_only_result_fields():
    answer = {"jsonrpc": "2.0", "id": 9, "result": {"tools": [], "ttlMs": 0, "cacheScope": "private"}}
    shaped = handlers.shape_result(request("tools/list", {}, era="legacy"), answer)["result"]
    assert shaped == {"tools": []}
