"""End to end with real peers: the official MCP SDK client -> Behavry -> the demo SDK server."""

import pytest

from audit.models import AuditEvent
from tests.conftest import TEST_ACTOR
from tests.proxy.conftest import MODES, mcp_client, run_in_thread

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("starter_policies")]


def events(**filters):
    return list(AuditEvent.objects.filter(**filters).order_by("id").values())


@pytest.mark.parametrize("mode", MODES)
async def test_an_allowed_call_reaches_the_upstream_and_is_audited(behavry_url, demo_server, token, agent, mode):
    async with mcp_client(f"{behavry_url}/mcp/demo", token, mode) as client:
        result = await client.call_tool("read_file", {"path": "/docs/readme.md"})
    assert not result.is_error
    assert "Demo workspace" in result.content[0].text
    decision, outcome = await run_in_thread(events, tool="read_file")
    assert (decision["kind"], decision["decision"], decision["policy_id"]) == ("decision", "allow", "reads")
    assert (decision["action"], decision["resource"], decision["agent_id"]) == ("read", "/docs/readme.md", agent.pk)
    assert outcome["kind"] == "outcome" and outcome["request_id"] == decision["request_id"]
    assert outcome["details"]["status"] == "ok" and outcome["latency_ms"] > 0
    assert decision["id"] < outcome["id"]  # the decision was committed before the call went out


@pytest.mark.parametrize("mode", MODES)
async def test_an_unmatched_call_is_denied_by_default_and_the_session_stays_usable(
    behavry_url, demo_server, token, mode
):
    async with mcp_client(f"{behavry_url}/mcp/demo", token, mode) as client:
        denied = await client.call_tool("send_email", {"to": "a@example.com", "subject": "s", "body": "b"})
        assert denied.is_error
        assert denied.structured_content == {
            "behavry": {
                "decision": "deny",
                "policy_id": "default.deny",
                "reason": "No policy allows this call (default deny).",
                "escalation_id": None,
            }
        }
        assert "default.deny" in denied.content[0].text
        after = await client.call_tool("echo", {"message": "still here"})
        assert not after.is_error and after.content[0].text == "Echo: still here"
    (event,) = await run_in_thread(events, tool="send_email")
    assert (event["decision"], event["policy_id"]) == ("deny", "default.deny")
    assert not await run_in_thread(events, tool="send_email", kind="outcome")  # nothing was forwarded


@pytest.mark.parametrize("mode", MODES)
async def test_a_deny_rule_names_itself_and_its_reason(behavry_url, demo_server, token, mode):
    async with mcp_client(f"{behavry_url}/mcp/demo", token, mode) as client:
        denied = await client.call_tool("delete_file", {"path": "/docs/readme.md"})
        check = await client.call_tool("read_file", {"path": "/docs/readme.md"})
    assert denied.structured_content["behavry"]["policy_id"] == "no-deleting"
    assert "Deleting is not allowed." in denied.content[0].text
    assert not check.is_error  # the file is still there: nothing reached the upstream


@pytest.mark.parametrize("mode", MODES)
async def test_tools_list_shows_only_what_the_agent_could_be_allowed(behavry_url, demo_server, token, mode):
    async with mcp_client(f"{behavry_url}/mcp/demo", token, mode) as client:
        names = {t.name for t in (await client.list_tools()).tools}
    # delete_file is denied outright, send_email matches nothing; write_file can be escalated.
    assert names == {
        "echo",
        "read_file",
        "list_files",
        "write_file",
        "slow_task",
        "task_status",
        "fail",
        "ask_user",
        "ping_client",
        "announce_tools_changed",
        "show_credentials",
    }
    listing = await run_in_thread(lambda: AuditEvent.objects.filter(action="list").latest("id").details)
    assert listing["listed"] == len(names) and listing["offered"] == len(names) + 2  # delete_file, send_email


@pytest.mark.parametrize("mode", MODES)
async def test_progress_is_relayed_from_the_upstream(behavry_url, demo_server, token, mode):
    seen = []

    async def on_progress(progress, total, message):
        seen.append(progress)

    async with mcp_client(f"{behavry_url}/mcp/demo", token, mode) as client:
        result = await client.call_tool("slow_task", {"seconds": 0.3, "steps": 3}, progress_callback=on_progress)
    assert not result.is_error
    assert seen == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("mode", MODES)
async def test_an_upstream_tool_error_comes_back_as_is_error_and_is_audited(behavry_url, demo_server, token, mode):
    async with mcp_client(f"{behavry_url}/mcp/demo", token, mode) as client:
        result = await client.call_tool("fail", {"message": "kaboom"})
    assert result.is_error and "kaboom" in result.content[0].text
    outcome = (await run_in_thread(events, tool="fail", kind="outcome"))[0]
    assert outcome["details"] == {"status": "ok", "is_error": True}


@pytest.mark.parametrize("mode", MODES)
async def test_an_agent_on_either_era_works_with_a_legacy_only_upstream(behavry_url, legacy_server, token, mode):
    async with mcp_client(f"{behavry_url}/mcp/legacy", token, mode) as client:
        result = await client.call_tool("echo", {"message": "bridged"})
        again = await client.call_tool("read_file", {"path": "/docs/roadmap.md"})
    assert result.content[0].text == "Echo: bridged"
    assert "Q1" in again.content[0].text
    await run_in_thread(legacy_server.refresh_from_db)
    assert legacy_server.era == "legacy"


async def test_the_upstream_era_is_detected_and_remembered(behavry_url, demo_server, token):
    async with mcp_client(f"{behavry_url}/mcp/demo", token, "legacy") as client:
        await client.call_tool("echo", {"message": "x"})
    await run_in_thread(demo_server.refresh_from_db)
    assert (demo_server.era, demo_server.protocol_version) == ("modern", "2026-07-28")


async def test_auto_mode_negotiates_the_modern_era(behavry_url, demo_server, token):
    async with mcp_client(f"{behavry_url}/mcp/demo", token, "auto") as client:
        assert client.protocol_version == "2026-07-28"
        assert client.server_info.name == "behavry"
        result = await client.call_tool("echo", {"message": "auto"})
    assert result.content[0].text == "Echo: auto"


@pytest.mark.parametrize("mode", MODES)
async def test_resources_and_prompts_pass_through_under_policy(behavry_url, demo_server, token, mode):
    async with mcp_client(f"{behavry_url}/mcp/demo", token, mode) as client:
        resource = await client.read_resource("demo://readme")
        prompt = await client.get_prompt("summarize", {"path": "/docs/readme.md"})
    assert "Demo workspace" in resource.contents[0].text
    assert "Summarize" in prompt.messages[0].content.text
    kinds = await run_in_thread(lambda: set(AuditEvent.objects.filter(kind="decision").values_list("tool", flat=True)))
    assert {"resource:demo://readme", "prompt:summarize"} <= kinds


@pytest.mark.parametrize("mode", MODES)
async def test_the_upstream_gets_its_own_credential_and_never_the_agent_token(behavry_url, demo_server, token, mode):
    from proxy.services import upstream_server_update
    from tests.conftest import TEST_ACTOR

    await run_in_thread(
        upstream_server_update,
        server=demo_server,
        auth_header_name="X-Upstream-Key",
        auth_header_value="upstream-secret",
        by=TEST_ACTOR,
    )
    async with mcp_client(f"{behavry_url}/mcp/demo", token, mode) as client:
        result = await client.call_tool("show_credentials", {})
    assert not result.is_error
    seen = result.structured_content
    assert seen["x-upstream-key"] == "upstream-secret"
    assert token not in str(seen) and seen["authorization"] == ""


async def test_an_upstream_elicitation_is_relayed_to_the_agent_and_its_answer_back(behavry_url, legacy_server, token):
    from mcp_types import ElicitResult

    asked = []

    async def answer(context, params):
        asked.append(params.message)
        return ElicitResult(action="accept", content={"confirm": True})

    async with mcp_client(f"{behavry_url}/mcp/legacy", token, "legacy", elicitation_callback=answer) as client:
        result = await client.call_tool("ask_user", {"question": "Proceed?"})
    assert asked == ["Proceed?"]
    assert result.content[0].text == "The user answered yes."


async def test_server_initiated_notifications_arrive_on_the_get_stream(behavry_url, legacy_server, token):
    import asyncio

    received = asyncio.Event()

    async def on_message(message):
        if getattr(getattr(message, "root", message), "method", None) == "notifications/tools/list_changed":
            received.set()

    async with mcp_client(f"{behavry_url}/mcp/legacy", token, "legacy", message_handler=on_message) as client:
        await asyncio.sleep(0.3)  # the SDK opens its GET stream right after initialize
        result = await client.call_tool("announce_tools_changed", {})
        assert result.content[0].text == "announced"
        await asyncio.wait_for(received.wait(), timeout=5)


async def test_the_get_stream_outlives_its_keepalives(behavry_url, legacy_server, token, monkeypatch):
    """Idle GET streams get SSE comments; the pending upstream read must survive them."""
    import asyncio

    monkeypatch.setattr("proxy.endpoint.KEEPALIVE_SECONDS", 0.1)
    received = asyncio.Event()

    async def on_message(message):
        if getattr(getattr(message, "root", message), "method", None) == "notifications/tools/list_changed":
            received.set()

    async with mcp_client(f"{behavry_url}/mcp/legacy", token, "legacy", message_handler=on_message) as client:
        await asyncio.sleep(1.0)  # about ten keepalives on the idle stream
        await client.call_tool("announce_tools_changed", {})
        await asyncio.wait_for(received.wait(), timeout=5)


@pytest.mark.parametrize("mode", MODES)
async def test_other_methods_pass_through_and_are_audited(behavry_url, demo_server, token, mode):
    async with mcp_client(f"{behavry_url}/mcp/demo", token, mode) as client:
        prompts = await client.list_prompts()
        resources = await client.list_resources()
    assert [p.name for p in prompts.prompts] == ["summarize", "release_notes"]
    assert [str(r.uri) for r in resources.resources] == ["demo://readme"]
    methods = await run_in_thread(
        lambda: set(AuditEvent.objects.filter(policy_id="system.passthrough").values_list("action", flat=True))
    )
    assert {"prompts/list", "resources/list"} <= methods


@pytest.mark.parametrize(
    ("slug", "mode"), [("legacy", "legacy"), ("demo", "legacy"), ("legacy", "auto"), ("demo", "auto")]
)
async def test_the_agent_gets_the_upstreams_capabilities_and_instructions(
    behavry_url, demo_server, legacy_server, token, slug, mode
):
    """In every pair of eras, as far as Behavry can deliver them: change notifications only where
    a 2025 upstream's GET stream reaches a 2025 agent's. ("auto" discovers, which is how a
    2026-07-28 client asks; with mode="2026-07-28" the SDK assumes instead of asking.)"""
    async with mcp_client(f"{behavry_url}/mcp/{slug}", token, mode) as client:
        capabilities = client.server_capabilities
        instructions = client.instructions
    assert capabilities.tools is not None and capabilities.prompts is not None and capabilities.resources is not None
    assert instructions == "Demo tools behind Behavry."
    relayed = slug == "legacy" and mode == "legacy"
    if not relayed:
        assert not capabilities.tools.list_changed and not capabilities.resources.subscribe


@pytest.mark.parametrize("mode", MODES)
async def test_a_completion_for_a_refused_prompt_is_refused_too(behavry_url, demo_server, token, mode):
    """The outsider's probe: an agent refused `prompt:summarize` must not read the workspace's
    paths through the completion of that prompt's argument."""
    from mcp.shared.exceptions import MCPError
    from mcp_types import PromptReference

    from policies.services import policy_create

    await run_in_thread(
        policy_create,
        data={"name": "no summaries", "effect": "deny", "tools": ["prompt:summarize"], "reason": "not for you"},
        by=TEST_ACTOR,
    )
    async with mcp_client(f"{behavry_url}/mcp/demo", token, mode) as client:
        allowed = await client.complete(
            PromptReference(type="ref/prompt", name="release_notes"), {"name": "version", "value": ""}
        )
        with pytest.raises(MCPError, match="no-summaries"):
            await client.complete(PromptReference(type="ref/prompt", name="summarize"), {"name": "path", "value": "/"})
    assert allowed.completion is not None
    decisions = await run_in_thread(
        lambda: list(
            AuditEvent.objects.filter(kind="decision", tool="prompt:summarize").values_list("decision", flat=True)
        )
    )
    assert decisions == ["deny"]
