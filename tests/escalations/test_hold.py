"""Escalations end to end: the official SDK client waits on a held call while a second task
decides over the REST API, with the real demo upstream behind Behavry."""

import asyncio
import itertools
import uuid

import httpx
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from audit.models import AuditEvent
from escalations.models import Escalation
from tests.proxy.conftest import MODES, mcp_client, run_in_thread

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("demo_server", "starter_policies")]


async def api(behavry_url, method, path, key, body=None):
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.request(
            method, f"{behavry_url}/api/v1/{path}", json=body, headers={"Authorization": f"Bearer {key}"}
        )


async def pending_id(behavry_url, key, timeout=10.0) -> int:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        response = await api(behavry_url, "GET", "escalations/?status=pending", key)
        results = response.json()["results"]
        if results:
            return results[0]["id"]
        await asyncio.sleep(0.1)
    raise AssertionError("no pending escalation appeared")


async def upstream_has(demo_upstream, path) -> bool:
    async with Client(demo_upstream, mode="2026-07-28") as direct:
        return not (await direct.call_tool("read_file", {"path": path})).is_error


def new_path() -> str:
    return f"/held/{uuid.uuid4().hex}"


@pytest.mark.parametrize("mode", MODES)
async def test_an_approved_call_returns_the_upstream_result_on_the_held_stream(
    behavry_url, demo_upstream, token, approver_key, mode
):
    path = new_path()
    async with mcp_client(f"{behavry_url}/mcp/demo", token, mode) as client:
        call = asyncio.create_task(client.call_tool("write_file", {"path": path, "content": "approved"}))
        escalation_id = await pending_id(behavry_url, approver_key)
        approved = await api(behavry_url, "POST", f"escalations/{escalation_id}/approve/", approver_key, {"note": "ok"})
        assert approved.status_code == 200 and approved.json()["status"] == "approved"
        result = await asyncio.wait_for(call, 10)
    assert not result.is_error and f"to {path}" in result.content[0].text
    assert await upstream_has(demo_upstream, path)
    forwarded = await run_in_thread(
        lambda: AuditEvent.objects.get(policy_id=f"escalation.{escalation_id}", kind="decision")
    )
    assert forwarded.decision == "allow"


@pytest.mark.parametrize("mode", MODES)
async def test_a_denied_call_names_the_escalation_and_the_note(behavry_url, demo_upstream, token, approver_key, mode):
    path = new_path()
    async with mcp_client(f"{behavry_url}/mcp/demo", token, mode) as client:
        call = asyncio.create_task(client.call_tool("write_file", {"path": path, "content": "x"}))
        escalation_id = await pending_id(behavry_url, approver_key)
        await api(behavry_url, "POST", f"escalations/{escalation_id}/deny/", approver_key, {"note": "not today"})
        result = await asyncio.wait_for(call, 10)
        assert result.is_error
        assert result.structured_content["behavry"] == {
            "decision": "deny",
            "policy_id": "escalation.denied",
            "reason": f"Escalation {escalation_id} was denied by api_key:approver-key: not today",
            "escalation_id": escalation_id,
        }
        still_usable = await client.call_tool("echo", {"message": "after deny"})
        assert not still_usable.is_error
    assert not await upstream_has(demo_upstream, path)


async def test_an_escalation_expires_at_its_deadline_and_denies(behavry_url, demo_upstream, token, settings):
    settings.BEHAVRY_ESCALATION_TIMEOUTS = {**settings.BEHAVRY_ESCALATION_TIMEOUTS, "low": 2}
    path = new_path()
    async with mcp_client(f"{behavry_url}/mcp/demo", token, "2026-07-28") as client:
        result = await client.call_tool("write_file", {"path": path, "content": "x"})
    assert result.structured_content["behavry"]["policy_id"] == "escalation.expired"
    escalation = await run_in_thread(lambda: Escalation.objects.get())
    assert escalation.status == "expired"
    assert not await upstream_has(demo_upstream, path)


@pytest.mark.parametrize("mode", MODES)
async def test_a_client_cancel_cancels_the_escalation_and_a_late_approval_forwards_nothing(
    behavry_url, demo_upstream, token, approver_key, mode
):
    path = new_path()
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with Client(
        streamable_http_client(f"{behavry_url}/mcp/demo", http_client=http), mode=mode, read_timeout_seconds=1.0
    ) as client:
        with pytest.raises(MCPError):
            await client.call_tool("write_file", {"path": path, "content": "x"})
    for _ in range(50):
        escalation = await run_in_thread(lambda: Escalation.objects.get())
        if escalation.status != "pending":
            break
        await asyncio.sleep(0.1)
    assert escalation.status == "cancelled"
    late = await api(behavry_url, "POST", f"escalations/{escalation.pk}/approve/", approver_key, {})
    assert late.status_code == 409
    await asyncio.sleep(0.5)
    assert not await upstream_has(demo_upstream, path)


async def test_max_hold_answers_pending_and_a_retry_attaches_to_the_same_escalation(
    behavry_url, demo_upstream, agent, token, approver_key
):
    await run_in_thread(lambda: type(agent).objects.filter(pk=agent.pk).update(max_hold_seconds=1))
    path = new_path()
    arguments = {"path": path, "content": "patience"}
    async with mcp_client(f"{behavry_url}/mcp/demo", token, "2026-07-28") as client:
        first = await client.call_tool("write_file", arguments)
        info = first.structured_content["behavry"]
        assert first.is_error and info["decision"] == "escalate"
        assert f"escalation {info['escalation_id']}" in first.content[0].text
        await run_in_thread(lambda: type(agent).objects.filter(pk=agent.pk).update(max_hold_seconds=30))
        await asyncio.sleep(1.1)  # the identity cache lives 1 s
        retry = asyncio.create_task(client.call_tool("write_file", arguments))
        await asyncio.sleep(0.3)
        assert await run_in_thread(lambda: Escalation.objects.count()) == 1  # attached, not a new one
        await api(behavry_url, "POST", f"escalations/{info['escalation_id']}/approve/", approver_key, {})
        result = await asyncio.wait_for(retry, 10)
    assert not result.is_error
    assert await upstream_has(demo_upstream, path)


async def test_approving_with_an_exception_allows_the_same_call_next_time(behavry_url, token, approver_key):
    arguments = {"path": "/docs/exception.md", "content": "x"}
    async with mcp_client(f"{behavry_url}/mcp/demo", token, "2026-07-28") as client:
        call = asyncio.create_task(client.call_tool("write_file", arguments))
        escalation_id = await pending_id(behavry_url, approver_key)
        await api(
            behavry_url, "POST", f"escalations/{escalation_id}/approve/", approver_key, {"create_exception": True}
        )
        await asyncio.wait_for(call, 10)
        await asyncio.sleep(0.6)  # policy changes (exceptions too) reach every process within 1 s
        again = await client.call_tool("write_file", {**arguments, "content": "second time"})
    assert not again.is_error
    assert await run_in_thread(lambda: Escalation.objects.count()) == 1
    decision = await run_in_thread(
        lambda: AuditEvent.objects.filter(kind="decision", tool="write_file").order_by("-id").first()
    )
    assert decision.policy_id.startswith("exception.")


async def test_progress_and_keepalives_flow_while_held(behavry_url, token, approver_key, monkeypatch):
    monkeypatch.setattr("proxy.hold.KEEPALIVE_SECONDS", 0.3)
    seen = []

    async def on_progress(progress, total, message):
        seen.append(message)

    async with mcp_client(f"{behavry_url}/mcp/demo", token, "legacy") as client:
        call = asyncio.create_task(
            client.call_tool("write_file", {"path": new_path(), "content": "x"}, progress_callback=on_progress)
        )
        escalation_id = await pending_id(behavry_url, approver_key)
        await asyncio.sleep(1.0)
        await api(behavry_url, "POST", f"escalations/{escalation_id}/approve/", approver_key, {})
        await asyncio.wait_for(call, 10)
    assert len(seen) >= 2
    assert seen[0] == f"Waiting for approval (escalation {escalation_id})"


@pytest.fixture
def slow_task_needs_approval(starter_policies):
    from policies.services import policy_create
    from tests.conftest import TEST_ACTOR

    policy_create(
        data={"name": "slow work needs approval", "effect": "escalate", "tools": ["slow_task"], "reason": "Slow."},
        by=TEST_ACTOR,
    )


# The upstream restarts its progress at 1 on the agent's token after the hold's own 1, 2, ...;
# the spec says progress on one token MUST increase with every notification.
@pytest.mark.usefixtures("legacy_server", "slow_task_needs_approval")
@pytest.mark.parametrize("server", ["demo", "legacy"])  # a 2026-07-28 and a 2025 upstream
@pytest.mark.parametrize("mode", MODES)
async def test_progress_keeps_increasing_from_the_hold_into_the_approved_call(
    behavry_url, token, approver_key, monkeypatch, server, mode
):
    monkeypatch.setattr("proxy.hold.KEEPALIVE_SECONDS", 0.2)
    seen = []
    held_progress = asyncio.Event()

    async def on_progress(progress, total, message):
        seen.append((progress, total, message))
        held_progress.set()

    async with mcp_client(f"{behavry_url}/mcp/{server}", token, mode) as client:
        call = asyncio.create_task(
            client.call_tool("slow_task", {"seconds": 0.3, "steps": 3}, progress_callback=on_progress)
        )
        escalation_id = await pending_id(behavry_url, approver_key)
        await asyncio.wait_for(held_progress.wait(), 10)
        await api(behavry_url, "POST", f"escalations/{escalation_id}/approve/", approver_key, {})
        result = await asyncio.wait_for(call, 10)
    assert not result.is_error and result.content[0].text == "Finished 3 steps in 0.3s"
    held = [p for p in seen if p[2] == f"Waiting for approval (escalation {escalation_id})"]
    upstream = [p for p in seen if p[2].startswith("step ")]
    assert held and seen[: len(held)] == held  # the hold's progress came first ...
    assert [m for _, _, m in upstream] == ["step 1/3", "step 2/3", "step 3/3"]  # ... then every upstream step
    values = [p for p, _, _ in seen]
    assert all(a < b for a, b in itertools.pairwise(values)), seen
    # The upstream's steps keep their place within its total: n held ticks shift both by n.
    assert upstream[-1][0] == upstream[-1][1] == len(held) + 3


async def test_suspending_the_agent_releases_its_held_call_quickly(behavry_url, agent, token, admin_key, approver_key):
    async with mcp_client(f"{behavry_url}/mcp/demo", token, "2026-07-28") as client:
        call = asyncio.create_task(client.call_tool("write_file", {"path": new_path(), "content": "x"}))
        escalation_id = await pending_id(behavry_url, approver_key)
        from agents.services import agent_suspend
        from tests.conftest import TEST_ACTOR

        started = asyncio.get_running_loop().time()
        await run_in_thread(agent_suspend, agent=agent, reason="runaway", by=TEST_ACTOR)
        result = await asyncio.wait_for(call, 5)
        released_after = asyncio.get_running_loop().time() - started
    assert result.structured_content["behavry"]["policy_id"] == "escalation.cancelled"
    assert released_after < 5.0  # released by the suspension, not by the 30 min deadline
    status = await run_in_thread(lambda: Escalation.objects.get(pk=escalation_id).status)
    assert status == "cancelled"


async def test_concurrent_approve_and_deny_have_exactly_one_winner(behavry_url, token, approver_key, admin_key):
    async with mcp_client(f"{behavry_url}/mcp/demo", token, "2026-07-28") as client:
        call = asyncio.create_task(client.call_tool("write_file", {"path": new_path(), "content": "x"}))
        escalation_id = await pending_id(behavry_url, approver_key)
        responses = await asyncio.gather(
            api(behavry_url, "POST", f"escalations/{escalation_id}/approve/", approver_key, {}),
            api(behavry_url, "POST", f"escalations/{escalation_id}/deny/", admin_key, {}),
        )
        await asyncio.wait_for(call, 10)
    assert sorted(r.status_code for r in responses) == [200, 409]
    terminal = await run_in_thread(
        lambda: AuditEvent.objects.filter(action__in=["escalation.approve", "escalation.deny"]).count()
    )
    assert terminal == 1
