"""An upstream's question to the agent (elicitation), in every pairing of agent and upstream era.

2025 servers ask mid-call on the stream; 2026-07-28 servers answer `input_required` and expect a
retry (MRTR). The demo upstream's `ask_user` asks in whichever era it is spoken to; `/mcp/demo`
is a 2026 upstream and `/mcp/legacy` a 2025-only one.
"""

import asyncio
import json

import httpx
import pytest
from mcp_types import ElicitResult

from audit.models import AuditEvent
from policies.engine import engine_cache
from policies.services import policy_create
from proxy import mrtr
from proxy.jsonrpc import RpcError
from tests.conftest import TEST_ACTOR
from tests.proxy.conftest import MODES, mcp_client, run_in_thread, upstream_task_status
from tests.proxy.test_endpoint import ACCEPT, modern_call, modern_headers, post

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("starter_policies")]

UPSTREAMS = ["demo", "legacy"]


def answering(action="accept", confirm=True):
    asked = []

    async def answer(context, params):
        asked.append(params.message)
        return ElicitResult(action=action, content={"confirm": confirm} if action == "accept" else None)

    return asked, answer


async def outcomes(tool="ask_user"):
    rows = await run_in_thread(
        lambda: list(
            AuditEvent.objects.filter(kind="outcome", tool=tool).order_by("id").values_list("details", flat=True)
        )
    )
    return [row["status"] for row in rows]


@pytest.mark.parametrize("upstream", UPSTREAMS)
@pytest.mark.parametrize("mode", MODES)
async def test_the_question_reaches_the_agent_in_its_era_and_the_answer_gets_back(
    behavry_url, demo_server, legacy_server, token, mode, upstream
):
    asked, answer = answering(confirm=True)
    async with mcp_client(f"{behavry_url}/mcp/{upstream}", token, mode, elicitation_callback=answer) as client:
        result = await client.call_tool("ask_user", {"question": "Deploy now?"})

    assert asked == ["Deploy now?"]
    assert not result.is_error
    assert result.content[0].text == "The user answered yes."


@pytest.mark.parametrize(("mode", "upstream"), [("legacy", "demo"), ("2026-07-28", "legacy")])
async def test_a_declined_question_is_passed_on_across_eras(
    behavry_url, demo_server, legacy_server, token, mode, upstream
):
    asked, answer = answering(action="decline")
    async with mcp_client(f"{behavry_url}/mcp/{upstream}", token, mode, elicitation_callback=answer) as client:
        result = await client.call_tool("ask_user", {"question": "Delete the backups?"})
    assert asked == ["Delete the backups?"]
    assert result.content[0].text == "The user chose decline."


async def test_a_2026_agent_on_a_2025_upstream_is_audited_per_round(behavry_url, legacy_server, token):
    _asked, answer = answering()
    async with mcp_client(f"{behavry_url}/mcp/legacy", token, "2026-07-28", elicitation_callback=answer) as client:
        await client.call_tool("ask_user", {"question": "Proceed?"})

    decisions = await run_in_thread(lambda: AuditEvent.objects.filter(kind="decision", tool="ask_user").count())
    assert decisions == 2  # the call and its retry are each decided
    assert await outcomes() == ["input_required", "ok"]


async def test_a_2025_agent_on_a_2026_upstream_is_one_call(behavry_url, demo_server, token):
    _asked, answer = answering()
    async with mcp_client(f"{behavry_url}/mcp/demo", token, "legacy", elicitation_callback=answer) as client:
        await client.call_tool("ask_user", {"question": "Proceed?"})
    assert await outcomes() == ["ok"]


@pytest.mark.parametrize("upstream", UPSTREAMS)
@pytest.mark.parametrize("mode", MODES)
async def test_a_prompt_that_asks_works_for_both_eras_of_agent_and_upstream(
    behavry_url, demo_server, legacy_server, token, mode, upstream
):
    # `release_notes` asks for a tone: with input_required on the 2026 demo upstream, with an
    # elicitation/create request in the middle of prompts/get on the 2025-only one.
    asked = []

    async def answer(context, params):
        asked.append(params.message)
        return ElicitResult(action="accept", content={"tone": "cheerful"})

    async with mcp_client(f"{behavry_url}/mcp/{upstream}", token, mode, elicitation_callback=answer) as client:
        prompt = await client.get_prompt("release_notes", {"version": "2.0"})

    assert asked == ["Which tone?"]
    assert prompt.messages[0].content.text == "Write cheerful release notes for version 2.0."
    decisions = await run_in_thread(
        lambda: list(AuditEvent.objects.filter(kind="decision", tool="prompt:release_notes").values_list("decision"))
    )
    # A 2026 agent answers with a second prompts/get (its retry), decided again.
    assert decisions == [("allow",)] * (2 if mode == "2026-07-28" else 1)


# --- Behavry's requestState, raw on the wire ------------------------------------------------------


def ask(question="Proceed?", msg_id=1):
    body = modern_call("ask_user", {"question": question}, msg_id)
    body["params"]["_meta"]["io.modelcontextprotocol/clientCapabilities"] = {"elicitation": {}}
    return body


def retry(first, responses, msg_id=2, **changes):
    body = ask(msg_id=msg_id, **changes)
    body["params"]["inputResponses"] = responses
    body["params"]["requestState"] = first["result"]["requestState"] if isinstance(first, dict) else first
    return body


async def rpc(url, body, token):
    """POST one modern call; its JSON-RPC answer, whether it came as JSON or as SSE."""
    response = await post(url, body, modern_headers(token, "tools/call", "ask_user"))
    if response.headers["content-type"].startswith("application/json"):
        assert response.status_code == (400 if "error" in response.json() else 200), response.text
        return response.json()
    assert response.status_code == 200, response.text
    for line in response.text.splitlines():
        if line.startswith("data:"):
            message = json.loads(line[5:])
            if message.get("id") == body["id"]:
                return message
    raise AssertionError(f"no answer in {response.text!r}")


@pytest.fixture
def legacy_url(behavry_url, legacy_server):
    return f"{behavry_url}/mcp/legacy"


async def ask_raw(url, token):
    body = await rpc(url, ask(), token)
    assert body["result"]["resultType"] == "input_required"
    assert body["result"]["requestState"].startswith(mrtr.STATE_PREFIX)
    [(key, question)] = body["result"]["inputRequests"].items()
    assert question["method"] == "elicitation/create" and question["params"]["message"] == "Proceed?"
    return body, key


async def test_a_state_is_good_for_one_retry(legacy_url, token):
    first, key = await ask_raw(legacy_url, token)
    answer = {key: {"action": "accept", "content": {"confirm": True}}}
    done = await rpc(legacy_url, retry(first, answer), token)
    again = await rpc(legacy_url, retry(first, answer, msg_id=3), token)

    assert done["id"] == 2 and done["result"]["content"][0]["text"] == "The user answered yes."
    assert again["id"] == 3 and again["result"]["isError"] is True
    assert "no longer held" in again["result"]["content"][0]["text"]


@pytest.mark.parametrize(
    ("make_state", "changes", "expected"),
    [
        (lambda s: mrtr.STATE_PREFIX + "forged", {}, "not issued by Behavry"),
        (lambda s: s[:-3] + ("AAA" if not s.endswith("AAA") else "BBB"), {}, "not issued by Behavry"),
        (lambda s: s, {"question": "Something else?"}, "different call"),
    ],
    ids=["forged", "tampered", "other-arguments"],
)
async def test_a_state_that_does_not_verify_is_invalid_params_recorded_and_nothing_is_forwarded(
    legacy_url, token, make_state, changes, expected
):
    first, key = await ask_raw(legacy_url, token)
    state = make_state(first["result"]["requestState"])
    before = await run_in_thread(lambda: list(AuditEvent.objects.values_list("pk", flat=True)))

    response = await post(
        legacy_url,
        retry(state, {key: {"action": "decline"}}, **changes),
        modern_headers(token, "tools/call", "ask_user"),
    )

    assert response.json()["error"]["code"] == -32602
    assert expected in response.json()["error"]["message"]
    new = await run_in_thread(lambda: list(AuditEvent.objects.exclude(pk__in=before).values()))
    assert [(e["kind"], e["decision"], e["policy_id"], e["tool"]) for e in new] == [
        ("decision", "deny", "system.invalid_request_state", "ask_user")
    ]
    assert expected in new[0]["reason"]


async def test_the_answer_goes_on_the_upstream_session_the_call_went_on(legacy_url, legacy_server, token):
    """Two first calls at once can each open a 2025 upstream session; the bridge row keeps only
    the last. The answer to a parked call's question must still reach the session that asked."""
    from agents.models import AgentSession
    from proxy.identity import target_for_slug
    from proxy.upstream import legacy_initialize

    first, key = await ask_raw(legacy_url, token)
    target = await run_in_thread(target_for_slug, "legacy")
    other_session, _version, _result = await legacy_initialize(target, client_info={}, client_capabilities={})
    moved = await run_in_thread(
        lambda: AgentSession.objects.filter(pk__startswith="bridge-").update(upstream_session_id=other_session)
    )
    assert moved == 1  # another "first call" won the bridge row meanwhile

    done = await rpc(legacy_url, retry(first, {key: {"action": "accept", "content": {"confirm": True}}}), token)

    assert done["result"]["content"][0]["text"] == "The user answered yes."


async def test_input_responses_must_be_an_object(legacy_url, token):
    first, _key = await ask_raw(legacy_url, token)
    assert (await rpc(legacy_url, retry(first, ["yes"]), token))["error"]["code"] == -32602


async def test_the_retry_is_decided_again_so_a_new_deny_rule_stops_it(legacy_url, token):
    first, key = await ask_raw(legacy_url, token)
    await run_in_thread(
        policy_create, data={"name": "no questions", "effect": "deny", "tools": ["ask_user"]}, by=TEST_ACTOR
    )
    engine_cache.reset()  # the proxy would notice the new version within 0.5 s; now, for the test

    response = await post(
        legacy_url,
        retry(first, {key: {"action": "accept", "content": {"confirm": True}}}),
        modern_headers(token, "tools/call", "ask_user"),
    )

    result = response.json()["result"]
    assert result["isError"] is True
    assert result["structuredContent"]["behavry"]["decision"] == "deny"


# --- a 2025 agent answering on the wire -----------------------------------------------------------


async def legacy_session(url, token) -> str:
    params = {
        "protocolVersion": "2025-11-25",
        "capabilities": {"elicitation": {}},
        "clientInfo": {"name": "t", "version": "1"},
    }
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}
    response = await post(url, body, {"Authorization": f"Bearer {token}", "Accept": ACCEPT})
    return response.headers["mcp-session-id"]


def legacy_headers(token, session):
    return {
        "Authorization": f"Bearer {token}",
        "Accept": ACCEPT,
        "Content-Type": "application/json",
        "Mcp-Session-Id": session,
        "MCP-Protocol-Version": "2025-11-25",
    }


async def call_and_answer(ask_url, answer_url, token, answer_for, foreign_session=None) -> dict:
    """POST ask_user on `ask_url` as a 2025 agent; answer the question on `answer_url`; the final message.

    With `foreign_session`, that session first sends the same answer (it must not count).
    """
    session = await legacy_session(ask_url, token)
    headers = legacy_headers(token, session)
    call = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "ask_user", "arguments": {"question": "Ok?"}},
    }
    async with (
        httpx.AsyncClient(timeout=30) as http,
        http.stream("POST", ask_url, content=json.dumps(call), headers=headers) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            message = json.loads(line[5:])
            if message.get("method") == "elicitation/create":
                assert message["id"].startswith(mrtr.INPUT_ID_PREFIX)
                if foreign_session is not None:
                    forged = {"jsonrpc": "2.0", "id": message["id"], "result": {"action": "decline"}}
                    sent = await http.post(
                        answer_url, content=json.dumps(forged), headers=legacy_headers(token, foreign_session)
                    )
                    assert sent.status_code == 202
                sent = await http.post(answer_url, content=json.dumps(answer_for(message)), headers=headers)
                assert sent.status_code == 202
            elif message.get("id") == 7:
                return message
    raise AssertionError("the stream ended without the call's result")


def yes(question):
    return {"jsonrpc": "2.0", "id": question["id"], "result": {"action": "accept", "content": {"confirm": True}}}


async def test_a_2025_agent_answering_with_an_error_gets_a_clear_is_error(behavry_url, demo_server, token):
    url = f"{behavry_url}/mcp/demo"
    final = await call_and_answer(
        url, url, token, lambda q: {"jsonrpc": "2.0", "id": q["id"], "error": {"code": -1, "message": "no UI here"}}
    )
    assert final["result"]["isError"] is True
    assert "no UI here" in final["result"]["content"][0]["text"]
    assert await outcomes() == ["upstream_error"]


async def test_an_answer_from_another_session_does_not_reach_the_question(behavry_url, demo_server, token):
    # Answers are routed by (session, id): the same id sent on another session is not an answer.
    url = f"{behavry_url}/mcp/demo"
    other = await legacy_session(url, token)
    final = await call_and_answer(url, url, token, yes, foreign_session=other)
    assert final["result"]["content"][0]["text"] == "The user answered yes."


# --- across real processes (PostgreSQL + Redis) -------------------------------------------------


@pytest.mark.postgres
@pytest.mark.redis
async def test_a_2025_agents_answer_posted_to_another_process_reaches_the_asking_stream(daphnes, demo_server, token):
    asking, answering_process = daphnes(), daphnes()
    final = await call_and_answer(f"{asking}/mcp/demo", f"{answering_process}/mcp/demo", token, yes)
    assert final["result"]["content"][0]["text"] == "The user answered yes."


@pytest.mark.postgres
@pytest.mark.redis
async def test_a_2026_agents_retry_on_another_process_resumes_the_parked_call(daphnes, legacy_server, token):
    holding, retrying = daphnes(), daphnes()
    first, key = await ask_raw(f"{holding}/mcp/legacy", token)

    done = await rpc(
        f"{retrying}/mcp/legacy", retry(first, {key: {"action": "accept", "content": {"confirm": True}}}), token
    )

    assert done["id"] == 2
    assert done["result"]["content"][0]["text"] == "The user answered yes."


first_arguments = {"question": "Proceed?", "then_seconds": 4, "tag": ""}


async def ask_slow(url, token, tag):
    body = ask()
    body["params"]["arguments"] = {**first_arguments, "tag": tag}
    first = await rpc(url, body, token)
    [key] = first["result"]["inputRequests"]
    return first, key


async def retry_and_hang_up(url, token, first, key, tag):
    """Answer the parked question, then hang up (2026-07-28: cancel) while the tool works on."""
    body = retry(first, {key: {"action": "accept", "content": {"confirm": True}}})
    body["params"]["arguments"] = {**first_arguments, "tag": tag}
    with pytest.raises(httpx.ReadTimeout):
        await post(url, body, modern_headers(token, "tools/call", "ask_user"), timeout=1.5)


async def test_a_2026_agent_hanging_up_on_its_retry_calls_the_2025_tool_off(legacy_url, legacy_upstream, token):
    first, key = await ask_slow(legacy_url, token, "retry-hang-up")
    await retry_and_hang_up(legacy_url, token, first, key, "retry-hang-up")
    assert await upstream_task_status(legacy_upstream, "retry-hang-up") == "cancelled"


@pytest.mark.postgres
@pytest.mark.redis
async def test_a_retry_cancelled_on_another_process_calls_the_tool_off_where_it_is_held(
    daphnes, legacy_server, legacy_upstream, token
):
    holding, retrying = daphnes(), daphnes()
    first, key = await ask_slow(f"{holding}/mcp/legacy", token, "remote-hang-up")
    await retry_and_hang_up(f"{retrying}/mcp/legacy", token, first, key, "remote-hang-up")
    assert await upstream_task_status(legacy_upstream, "remote-hang-up") == "cancelled"


async def test_an_agent_cannot_pile_up_parked_calls(monkeypatch):
    # No bus listener on the test's own loop: channels-redis allows one receiving loop per layer.
    monkeypatch.setattr(mrtr.inflight, "ensure_listening", lambda: None)
    closed = []

    async def never():
        yield {}

    def parked_call(agent_id: int, n: int) -> mrtr.Parked:
        async def close():
            closed.append((agent_id, n))

        async def send(_answer):
            return None

        return mrtr.Parked(agent_id, 1, "ask_user", "h", n, never(), close, send)

    tokens = []
    for n in range(mrtr.MAX_PARKED_PER_AGENT + 2):
        mrtr.park(parked := parked_call(1, n), {"id": n, "method": "elicitation/create", "params": {}})
        tokens.append(parked.token)
    mrtr.park(other := parked_call(2, 0), {"id": 0, "method": "elicitation/create", "params": {}})
    await asyncio.sleep(0)  # the dropped calls close in their own tasks

    try:
        assert closed == [(1, 0), (1, 1)]
        assert [t in mrtr._parked for t in tokens] == [False, False] + [True] * mrtr.MAX_PARKED_PER_AGENT
        assert other.token in mrtr._parked
    finally:
        for token in [*tokens, other.token]:
            if token in mrtr._parked:
                mrtr._drop(token)


async def test_a_ping_from_a_2025_upstream_is_answered_by_behavry_not_parked(behavry_url, legacy_server, token):
    async with mcp_client(f"{behavry_url}/mcp/legacy", token, "2026-07-28") as client:
        result = await client.call_tool("ping_client", {})
    assert not result.is_error
    assert result.content[0].text == "the client answered the ping"


@pytest.mark.parametrize(
    ("read_timeout", "ttl"), [(300.0, 295.0), (30.0, 25.0), (3.0, 1.0), (None, 600.0), (9999.0, 600.0)]
)
def test_a_parked_call_is_held_no_longer_than_its_upstream_stream_survives(read_timeout, ttl):
    from proxy.handlers import _parked_ttl

    assert _parked_ttl(read_timeout) == ttl


def test_a_state_past_its_own_expiry_is_refused():
    from django.core import signing

    claims = {"t": "tok", "a": 1, "s": 2, "n": "ask_user", "h": mrtr.arguments_hash({}), "x": 1}
    state = mrtr.STATE_PREFIX + signing.dumps(claims, salt=mrtr.STATE_SALT, compress=False)
    with pytest.raises(RpcError, match="expired"):
        mrtr.verify_state(state, agent_id=1, server_id=2, tool="ask_user", arguments={})
    claims["x"] = 2**40
    fresh = mrtr.STATE_PREFIX + signing.dumps(claims, salt=mrtr.STATE_SALT, compress=False)
    assert mrtr.verify_state(fresh, agent_id=1, server_id=2, tool="ask_user", arguments={}) == "tok"


async def test_a_ping_tool_on_a_2026_upstream_says_there_is_no_ping(behavry_url, demo_server, token):
    async with mcp_client(f"{behavry_url}/mcp/demo", token, "legacy") as client:
        result = await client.call_tool("ping_client", {})
    assert not result.is_error
    assert result.content[0].text.startswith("no ping on this protocol era")


async def test_a_2025_upstream_bridge_follows_the_capabilities_each_request_declares(behavry_url, legacy_server, token):
    """A 2026-07-28 client declares its capabilities per request; the 2025 upstream takes them once,
    at the bridge session's initialize. A program that declared none (first) and one that
    declares elicitation (second), on one agent token, each get what they declared."""
    _asked, answer = answering(confirm=True)
    from mcp.shared.exceptions import MCPError

    async with mcp_client(f"{behavry_url}/mcp/legacy", token, "2026-07-28") as plain:
        await plain.list_tools()  # opens a bridge without elicitation
        with pytest.raises(MCPError, match="did not declare"):  # never put to a client that cannot answer
            await plain.call_tool("ask_user", {"question": "Unasked?"})
    async with mcp_client(f"{behavry_url}/mcp/legacy", token, "2026-07-28", elicitation_callback=answer) as asking:
        result = await asking.call_tool("ask_user", {"question": "Deploy now?"})
    assert not result.is_error and result.content[0].text == "The user answered yes."
