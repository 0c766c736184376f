"""MCP method handlers: what Behavry does with each message an agent sends.

The transport (proxy/endpoint.py) has already authenticated the agent, resolved the upstream,
parsed and validated the message and found the agent's session. Handlers return a `Reply`: a
JSON body, or a stream of JSON-RPC messages to send as SSE.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from agents.models import AgentSession, SessionEra
from agents.services import agent_session_open, agent_session_set_upstream
from audit.aio import audit_record_async
from behavry.actors import Actor
from behavry.dbthreads import on_db_thread
from policies.engine import Decision, current_engine
from proxy import inflight, mrtr, sessions
from proxy import jsonrpc as rpc
from proxy.decision import decide_tool_call, fail_closed
from proxy.identity import AgentIdentity, clear_caches
from proxy.services import tool_catalog_sync, upstream_server_set_era
from proxy.upstream import (
    UpstreamAnswerTooLarge,
    UpstreamError,
    UpstreamIsModern,
    UpstreamReply,
    UpstreamSessionGone,
    UpstreamTarget,
    detect_era,
    first_response,
    legacy_initialize,
    legacy_request,
    mcp_param_mismatch,
    modern_request,
    post,
)

logger = logging.getLogger("behavry.proxy")

SERVER_INFO = {"name": "behavry", "version": "0.1.0"}
PASSTHROUGH = "system.passthrough"
INVALID_REQUEST_STATE = "system.invalid_request_state"
CACHEABLE_METHODS = {"tools/list", "prompts/list", "resources/list", "resources/templates/list", "resources/read"}
stats = {"fail_closed": 0, "outcome_audit_failed": 0}


@dataclass
class McpRequest:
    identity: AgentIdentity
    target: UpstreamTarget
    era: str  # the agent's era: "legacy" or "modern"
    protocol_version: str
    message: dict[str, Any]
    session: AgentSession | None = None
    # The id this request went upstream under on a 2025-era bridge session (_bridged_request_id),
    # and that upstream session: (session id, protocol version).
    bridged_id: str | None = None
    bridged_via: tuple[str, str] | None = None
    # A 2026-07-28 agent's own `Mcp-Param-*` headers (checked against the body where the catalog
    # knows the tool); those Behavry does not derive itself are passed on to a 2026 upstream.
    param_headers: dict[str, str] = field(default_factory=dict)

    @property
    def actor(self) -> Actor:
        return Actor(kind="agent", id=str(self.identity.agent_id), name=self.identity.name)

    @property
    def client_info(self) -> dict[str, Any]:
        if self.session is not None and self.era == "legacy":
            return self.session.client_info.get("clientInfo") or {}
        return (self.message.get("params") or {}).get("_meta", {}).get(rpc.META_CLIENT_INFO) or {}

    @property
    def client_capabilities(self) -> dict[str, Any]:
        if self.session is not None and self.era == "legacy":
            return self.session.client_info.get("capabilities") or {}
        return (self.message.get("params") or {}).get("_meta", {}).get(rpc.META_CLIENT_CAPS) or {}


@dataclass
class Reply:
    status: int = 200
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    stream: AsyncGenerator[Any, None] | None = None
    # Called when the agent cancels (2026-07-28 disconnect or notifications/cancelled) mid-stream.
    on_cancel: Callable[[], Awaitable[None]] | None = None
    # False for held escalations: a 2025-era disconnect leaves the escalation pending for a retry
    # instead of waiting on in the background.
    drain_on_disconnect: bool = True
    # The outcome event's commit when it overlaps the answer (answer_after_outcome): the endpoint
    # awaits it after sending the body, so the request ends only once its audit has.
    after: Awaitable[None] | None = None


KEEPALIVE = object()  # yielded by a stream to send an SSE comment line


# --- upstream plumbing ---------------------------------------------------------------------------


async def upstream_era(target: UpstreamTarget) -> tuple[str, dict[str, Any]]:
    """The upstream's era, detected once and remembered on the server row. Without a clear answer
    detect_era raises UpstreamError and nothing is remembered: the next request asks again. The
    verdict is stored only while the row still has the URL it is about (a new URL is asked anew)."""
    if target.era in ("legacy", "modern"):
        return target.era, {}
    era, discovered = await detect_era(target)
    version = rpc.LATEST_MODERN if era == "modern" else ""
    await database_sync_to_async(upstream_server_set_era)(
        server_id=target.id, era=era, protocol_version=version, url=target.url
    )
    clear_caches()
    return era, discovered


def _bridge_session_id(req: McpRequest) -> str:
    """One bridge per (agent, upstream, declared client capabilities): a 2026-07-28 client declares
    them on each request, and a 2025 upstream takes them once, at initialize, for the session. A
    bridge shared across capability sets would put questions to a client that declared none, or
    refuse them to one that did."""
    canonical = json.dumps(req.client_capabilities, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(canonical.encode("utf-8", "backslashreplace")).hexdigest()[:16]
    return f"bridge-{req.identity.agent_id}-{req.target.id}-{digest}"


async def _upstream_session(req: McpRequest, *, renew: bool = False) -> AgentSession:
    """The agent session whose upstream (2025-era) session carries this request, opened on demand.

    A legacy agent has its own session. A modern (stateless) agent talking to a 2025-era upstream
    gets one long-lived bridge session per (agent, upstream), kept in the database so any process
    can use it.
    """
    session = req.session
    if session is None:
        session = await database_sync_to_async(
            AgentSession.objects.filter(pk=_bridge_session_id(req), ended_at__isnull=True).first
        )()
        if session is not None:
            sessions.touch_if_due(session)  # a bridge ends when idle, as any session does
    if session is not None and session.upstream_session_id and not renew:
        return session
    upstream_id, version, result = await legacy_initialize(
        req.target, client_info=req.client_info, client_capabilities=req.client_capabilities
    )
    if session is None:
        session, evicted = await database_sync_to_async(agent_session_open)(
            agent_id=req.identity.agent_id,
            server_id=req.target.id,
            era=SessionEra.MODERN,
            protocol_version=rpc.LATEST_MODERN,
            client_info={"clientInfo": req.client_info, "capabilities": req.client_capabilities},
            upstream_session_id=upstream_id,
            upstream_protocol_version=version,
            upstream_info=_upstream_info(result),
            session_id=_bridge_session_id(req),
        )
        sessions.end_upstream_soon(req.target, evicted)
    else:
        await database_sync_to_async(agent_session_set_upstream)(
            session=session,
            upstream_session_id=upstream_id,
            upstream_protocol_version=version,
            upstream_info=_upstream_info(result),
        )
    return session


def _upstream_info(result: dict[str, Any]) -> dict[str, Any]:
    return {"capabilities": result.get("capabilities") or {}, "instructions": result.get("instructions")}


async def _era_and_session(req: McpRequest) -> tuple[str, dict[str, Any], AgentSession | None]:
    """The upstream's era (with what its detection discovered) and, for a 2025-era upstream, the
    session that carries this request. An upstream remembered as 2025-era that refuses a 2025
    initialize as an unsupported version has moved to 2026-07-28 (or an older detection got it
    wrong): it is forgotten and asked again, instead of failing every call until an admin steps in."""
    era, discovered = await upstream_era(req.target)
    if era != "legacy":
        return era, discovered, None
    try:
        return era, discovered, await _upstream_session(req)
    except UpstreamIsModern:
        await database_sync_to_async(upstream_server_set_era)(
            server_id=req.target.id, era="unknown", protocol_version="", url=req.target.url
        )
        clear_caches()
        req.target = dataclasses.replace(req.target, era="unknown")
        era, discovered = await upstream_era(req.target)
        return era, discovered, (await _upstream_session(req)) if era == "legacy" else None


async def upstream_send(req: McpRequest, message: dict[str, Any]) -> UpstreamReply:
    """Send one message upstream in the upstream's era, renewing a lost 2025-era session once."""
    era, _discovered, session = await _era_and_session(req)
    if era == "modern":
        wrapped, headers = modern_request(
            message, client_info=req.client_info, client_capabilities=req.client_capabilities
        )
        return await post(req.target, wrapped, headers=headers, agent_param_headers=req.param_headers)
    assert session is not None, "a 2025-era upstream always comes with its session"
    outgoing = legacy_request(message)
    sent_id = _bridged_request_id(req, outgoing)
    if sent_id is not None:
        outgoing = {**outgoing, "id": sent_id}
    try:
        _note_call_session(req, sent_id, session)
        reply = await post(
            req.target,
            outgoing,
            session_id=session.upstream_session_id or None,
            protocol_version=session.upstream_protocol_version or rpc.LATEST_LEGACY,
        )
    except UpstreamSessionGone:
        session = await _upstream_session(req, renew=True)
        _note_call_session(req, sent_id, session)
        reply = await post(
            req.target,
            outgoing,
            session_id=session.upstream_session_id or None,
            protocol_version=session.upstream_protocol_version,
        )
    if sent_id is not None:
        reply.messages = _answering_as(reply.messages, sent_id, message["id"])
    return reply


def _note_call_session(req: McpRequest, sent_id: str | None, session: AgentSession) -> None:
    """Remember the upstream session a bridged call goes on, before it goes: a cancel, and answers
    to the upstream's questions, must reach that session, even while the POST is still waiting
    for its headers (a 2025 server answering with JSON sends none until the tool is done). Two
    first calls at once can each open an upstream session, and the bridge row keeps only the last.
    """
    if sent_id is not None and sent_id == req.bridged_id:
        req.bridged_via = (session.upstream_session_id, session.upstream_protocol_version)


async def post_on_call_session(req: McpRequest, message: dict[str, Any]) -> None:
    """Post a message with no answer of its own (a response to the upstream's question, a cancel)
    on the upstream session this call went on; a 2025 agent's own session otherwise."""
    if req.bridged_via is None:
        await upstream_post(req, message)
        return
    session_id, version = req.bridged_via
    reply = await post(req.target, message, session_id=session_id or None, protocol_version=version)
    await reply.aclose()


def _bridged_request_id(req: McpRequest, message: dict[str, Any]) -> str | None:
    """The id a 2026 agent's request carries on its shared 2025-era bridge session, or None.

    Every stateless call of one agent to one 2025 upstream shares a single upstream session, and
    stateless clients number requests freely (many send id 1 every time). Two calls in flight
    under one id on one session would cross, so each goes upstream under an id Behavry owns, and
    the answer gets the agent's id back (_answering_as). A 2025 agent's own session keeps its ids:
    that agent already keeps them unique, and its notifications/cancelled names them.
    """
    if req.session is not None or "method" not in message or message.get("id") is None:
        return None
    sent_id = f"behavry-{uuid.uuid4().hex}"
    if message.get("id") == req.message.get("id"):
        req.bridged_id = sent_id  # the agent's own request: what a cancel must name upstream
    return sent_id


async def _answering_as(messages: AsyncIterator[dict[str, Any]], sent_id: str, agent_id: Any):
    try:
        async for message in messages:
            if message.get("id") == sent_id and "method" not in message:
                message = {**message, "id": agent_id}
            yield message
    finally:
        aclose = getattr(messages, "aclose", None)
        if aclose is not None:
            await aclose()


async def cancel_bridged(req: McpRequest, reason: str) -> None:
    """A 2026 agent cancelled (hung up on) a call Behavry carries on a 2025-era bridge session: a
    closed HTTP stream does not stop a 2025 server's work, a notifications/cancelled does."""
    if req.bridged_id is None or req.bridged_via is None:
        return
    params = {"requestId": req.bridged_id, "reason": reason}
    note = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": params}
    try:
        await asyncio.wait_for(post_on_call_session(req, note), timeout=5)
    except (UpstreamError, TimeoutError) as exc:
        logger.info("could not tell the upstream that request %s was cancelled: %s", req.bridged_id, exc)


async def upstream_post(req: McpRequest, message: dict[str, Any]) -> None:
    """Send a message that has no answer of its own (a response, a notification) upstream."""
    reply = await upstream_send(req, message)
    await reply.aclose()


def shape_result(req: McpRequest, message: dict[str, Any]) -> dict[str, Any]:
    """Adapt an upstream response to the agent's era (resultType, serverInfo)."""
    result = message.get("result")
    if not isinstance(result, dict):
        return message
    result = dict(result)
    if req.era == "modern":
        result.setdefault("resultType", "complete")
        if req.message.get("method") in CACHEABLE_METHODS:
            # Required on 2026-07-28 list/read results; a 2025-era upstream does not send them.
            result.setdefault("ttlMs", 0)
            # Never the upstream's "public": what Behavry passes was decided or filtered for this
            # agent, and a cache shared between principals would hand it to one policy refuses.
            result["cacheScope"] = "private"
        meta = dict(result.get("_meta") or {})
        meta[rpc.META_SERVER_INFO] = SERVER_INFO
        result["_meta"] = meta
    else:
        for field_2026 in ("resultType", "ttlMs", "cacheScope"):  # not in the 2025 schema
            result.pop(field_2026, None)
        if isinstance(result.get("_meta"), dict):
            meta = {k: v for k, v in result["_meta"].items() if not k.startswith("io.modelcontextprotocol/")}
            if meta:
                result["_meta"] = meta
            else:
                result.pop("_meta")
    return {**message, "result": result}


def _result(req: McpRequest, msg_id: Any, result: dict[str, Any]) -> dict[str, Any]:
    return shape_result(req, rpc.result_message(msg_id, result))


# --- audit helpers -------------------------------------------------------------------------------


def _event(req: McpRequest, **fields: Any) -> dict[str, Any]:
    """The audit event's arguments: this request's agent, session and server, plus `fields`."""
    return {
        "actor": req.actor,
        "agent": req.identity,
        "session": req.session.pk if req.session is not None else "",
        "server": req.target.slug,
        **fields,
    }


async def record(
    req: McpRequest, *, on_wire: asyncio.Future | None = None, timeout: float | None = None, **fields: Any
) -> None:
    """From the event loop: on PostgreSQL mostly without a database thread (audit/aio.py)."""
    await audit_record_async(on_wire=on_wire, timeout=timeout, **_event(req, **fields))


async def record_best_effort(req: McpRequest, **fields: Any) -> None:
    """Audit for session and listing events, which decide nothing: a failure is logged and counted,
    not turned into a refusal (tool calls themselves stay strictly audit-before-forward)."""
    try:
        await record(req, **fields)
    except Exception:
        stats["outcome_audit_failed"] += 1
        logger.exception("audit write failed for %s", fields.get("action"))


async def record_outcome(req: McpRequest, *, on_wire: asyncio.Future | None = None, **fields: Any) -> None:
    """Outcome events follow a forwarded call. If one cannot be written the call has already
    happened upstream, so the result still goes back (hiding it would invite a retry that runs the
    tool twice); the failure is logged and counted instead."""
    write = record(req, kind="outcome", on_wire=on_wire, timeout=OUTCOME_AUDIT_TIMEOUT_SECONDS, **fields)
    try:
        # Shielded where the handler may be cancelled mid-write (a hang-up). With on_wire the
        # caller is answer_after_outcome, whose task of its own nothing cancels: no second task.
        await (write if on_wire is not None else asyncio.shield(write))
    except Exception:
        stats["outcome_audit_failed"] += 1
        logger.exception("outcome audit write failed for request %s", fields.get("request_id"))


# An outcome follows a tool that already ran: worth waiting longer for than a decision, which
# must be denied on time (on SQLite the wait includes the queue for the one database thread).
# Still bounded, so a database that stopped answering cannot pile up writes without end.
OUTCOME_AUDIT_TIMEOUT_SECONDS = 60

# Outcome writes still committing after their answer went out (answer_after_outcome). Tasks are
# only weakly held by the loop; this keeps them alive, and tests wait on it.
outcomes_in_flight: set[asyncio.Task] = set()


async def answer_after_outcome(outcome, message: dict[str, Any], status: str, answer: dict[str, Any]) -> Reply:
    """The outcome event, then the answer (DESIGN §1: outcome -> reply), overlapping its commit.

    The answer waits until the event's statement has been handed to PostgreSQL's socket, not for
    the commit. From then on the event commits even if this process dies: the server runs a
    statement it has received and learns of a dead client only when it answers. The commit's
    round trip (0.5-1.1 ms on this machine at 100 calls/s, where each wake-up costs) then runs
    alongside the answer instead of before it. On SQLite, or when this process does not know the
    chain's head, the event is committed before the answer, as before. A failed write is logged
    and counted, as before.

    What this gives up, each time only if the process dies in the millisecond after the answer:
    - if another process wrote the agent's chain in between, the statement inserts nothing and
      the locking append that follows runs after the answer;
    - a server with client_connection_check_interval set cancels a statement still waiting for
      the head's row lock when its client goes;
    - if the whole host or the network goes, bytes still in the kernel's send buffer are lost.
    Another reader may also see the answer's effects about a millisecond before the outcome event.
    """
    on_wire = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(outcome(message, status, on_wire=on_wire))
    outcomes_in_flight.add(task)
    task.add_done_callback(outcomes_in_flight.discard)
    # The task's end resolves on_wire too: if building the event fails, the write never starts
    # (record_outcome logs it). One callback rather than asyncio.wait's sets, waiter and removals.
    task.add_done_callback(lambda _: _resolve(on_wire))
    await on_wire
    return Reply(body=answer, after=task)


def _resolve(future: asyncio.Future) -> None:
    if not future.done():  # also when it was cancelled: its waiter went away
        future.set_result(None)


# --- tools/call ----------------------------------------------------------------------------------


def denial_result(decision: Decision, *, escalation_id: int | None = None) -> dict[str, Any]:
    text = f"Behavry denied this call: {decision.reason} (policy {decision.policy_id}"
    text += f", escalation {escalation_id})" if escalation_id else ")"
    return {
        "content": [{"type": "text", "text": text}],
        "isError": True,
        "structuredContent": {
            "behavry": {
                "decision": "deny",
                "policy_id": decision.policy_id,
                "reason": decision.reason,
                "escalation_id": escalation_id,
            }
        },
    }


def error_result(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": True}


def _failure(req: McpRequest, text: str) -> dict[str, Any]:
    """What the agent gets when the upstream fails mid-call: an isError tool result for tools/call,
    a JSON-RPC error for prompts/get and resources/read (whose results have no error form)."""
    if req.message.get("method") == "tools/call":
        return _result(req, req.message["id"], error_result(text))
    return rpc.error_message(req.message["id"], rpc.UPSTREAM_FAILED, text)


def _policy_target(req: McpRequest) -> tuple[str, dict[str, Any]]:
    """The name and arguments policy decides on (and a requestState is bound to): the tool's own,
    or `prompt:<name>` / `resource:<uri>` for reads."""
    params = req.message.get("params") or {}
    method = req.message.get("method")
    raw = params.get("arguments")
    arguments: dict[str, Any] = raw if isinstance(raw, dict) else {}
    if method == "resources/read":
        return f"resource:{params.get('uri', '')}", arguments
    if method == "prompts/get":
        return f"prompt:{params.get('name', '')}", arguments
    return str(params.get("name", "")), arguments


def _call_details(req: McpRequest, decision: Decision | None = None) -> dict[str, Any]:
    details: dict[str, Any] = {
        "risk_tier": req.identity.risk_tier,
        "roles": sorted(req.identity.roles),
        "era": req.era,
        "protocol_version": req.protocol_version,
    }
    if decision is not None:
        if decision.exception_id:
            details["exception_id"] = decision.exception_id
        if decision.shadow:
            details["shadow"] = decision.shadow
            details["shadow_decision"] = decision.shadow_decision
    return details


@dataclass
class _Decided:
    decision: Decision
    action: str
    resource: str


def _decision_for(
    req: McpRequest,
    *,
    tool: str,
    arguments: dict[str, Any],
    started: float,
    action: str | None,
    resource: str | None,
    cached_only: bool = False,
) -> _Decided | None:
    """The decision, with its classification. A decision that raises, or that finishes later than
    BEHAVRY_DECISION_TIMEOUT_SECONDS after the call arrived (time queued for the database thread
    included), becomes a system.fail_closed deny. With `cached_only` (on the event loop), None when
    a cache needs the database: the caller then decides on a database thread."""
    try:
        outcome = decide_tool_call(
            identity=req.identity,
            server_id=req.target.id,
            server_slug=req.target.slug,
            tool=tool,
            arguments=arguments,
            action=action,
            resource=resource,
            cached_only=cached_only,
        )
        if outcome is None:
            return None
        if time.perf_counter() - started > settings.BEHAVRY_DECISION_TIMEOUT_SECONDS:
            raise TimeoutError("the decision took longer than BEHAVRY_DECISION_TIMEOUT_SECONDS")
        return _Decided(outcome.decision, outcome.classification.action, outcome.classification.resource)
    except Exception as exc:  # includes TimeoutError: a slow database is an unavailable one
        logger.exception("decision failed; denying")
        stats["fail_closed"] += 1
        return _Decided(fail_closed(f"decision error: {type(exc).__name__}"), action or "", resource or "")


def _decision_event(
    req: McpRequest, decided: _Decided, *, tool: str, arguments: dict[str, Any], request_id: str, started: float
) -> dict[str, Any]:
    decision = decided.decision
    return {
        "kind": "decision",
        "tool": tool,
        "action": decided.action,
        "resource": decided.resource,
        "decision": decision.decision,
        "policy_id": decision.policy_id,
        "reason": decision.reason,
        "request_id": request_id,
        "arguments": arguments,
        "trace": decision.trace,
        "details": _call_details(req, decision),
        "latency_ms": (time.perf_counter() - started) * 1000,
    }


async def _decide(
    req: McpRequest,
    *,
    tool: str,
    arguments: dict[str, Any],
    request_id: str,
    started: float,
    action: str | None = None,
    resource: str | None = None,
) -> _Decided:
    """Decide and commit the decision event, for tools/call and reads alike. The decision runs on
    the event loop when the caches are fresh (the usual case), else on a database thread; the event
    is written from the loop either way, so this process's appends to the agent's chain queue on
    one lock (audit/aio.py) instead of racing a thread's. If the decision event could not be
    committed, the call is a system.fail_closed deny: nothing is forwarded that the audit trail lacks."""
    how: dict[str, Any] = {
        "tool": tool,
        "arguments": arguments,
        "started": started,
        "action": action,
        "resource": resource,
    }
    decided = _decision_for(req, cached_only=True, **how)
    if decided is None:
        try:
            # Bounded here too, not only checked when it returns: a decision stuck on the database
            # (a lock, a server that stopped answering) is denied on time. The thread itself runs
            # on until the database answers; its late result is dropped.
            left = settings.BEHAVRY_DECISION_TIMEOUT_SECONDS - (time.perf_counter() - started)
            async with asyncio.timeout(max(left, 0)):
                decided = await on_db_thread(_decision_for, req, **how)
        except Exception as exc:  # the hop itself failed, or timed out
            logger.exception("decision failed; denying")
            stats["fail_closed"] += 1
            decided = _Decided(fail_closed(f"decision error: {type(exc).__name__}"), action or "", resource or "")
        assert decided is not None  # only a cached-only decision can be missing
    event = _decision_event(req, decided, tool=tool, arguments=arguments, request_id=request_id, started=started)
    try:
        await record(req, **event)
    except Exception as exc:
        logger.error("decision audit failed; denying", exc_info=exc)
        stats["fail_closed"] += 1
        return _Decided(fail_closed(f"audit unavailable: {type(exc).__name__}"), decided.action, decided.resource)
    return decided


async def handle_tools_call(req: McpRequest) -> Reply:
    """authenticate (done) -> classify -> decide -> audit the decision (committed) -> forward -> audit the outcome."""
    msg_id = req.message["id"]
    params = req.message["params"]
    tool, arguments = params.get("name"), params.get("arguments", {})
    if not isinstance(tool, str) or not tool:
        raise rpc.RpcError(rpc.INVALID_PARAMS, "Invalid params: 'name' must be a non-empty string", id=msg_id)
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise rpc.RpcError(rpc.INVALID_PARAMS, "Invalid params: 'arguments' must be an object", id=msg_id)
    started = time.perf_counter()
    request_id = uuid.uuid4().hex
    await _check_parked_state(req, tool, arguments, request_id)
    decided = await _decide(req, tool=tool, arguments=arguments, request_id=request_id, started=started)
    decision, action, resource = decided.decision, decided.action, decided.resource
    if decision.decision != "deny" and req.era == "modern":
        refused = await _refuse_param_mismatch(req, decided, tool, arguments, request_id, started)
        if refused is not None:
            return refused
    if decision.decision == "escalate":
        from proxy.hold import hold_for_approval  # the hold needs the forwarding below

        return await hold_for_approval(
            req,
            tool=tool,
            arguments=arguments,
            action=action,
            resource=resource,
            decision=decision,
            request_id=request_id,
        )
    if decision.decision != "allow":
        return Reply(body=_result(req, msg_id, denial_result(decision)))
    return await forward_call(
        req,
        tool=tool,
        action=action,
        resource=resource,
        policy_id=decision.policy_id,
        request_id=request_id,
        started=started,
    )


async def _check_parked_state(req: McpRequest, tool: str, arguments: dict[str, Any], request_id: str) -> None:
    """A 2026 agent answering a question its 2025 upstream asked (see _relay, _park). Checked
    before policy, so a forged or stale state is bad input; the retry is then decided like any
    call. A state that does not verify is recorded: forging one is worth a look."""
    if not mrtr.is_our_state(req.message["params"].get("requestState")):
        return
    try:
        _parked_token(req, tool, arguments)
    except rpc.RpcError as exc:
        await record_best_effort(
            req,
            kind="decision",
            tool=tool,
            decision="deny",
            policy_id=INVALID_REQUEST_STATE,
            reason=exc.message,
            request_id=request_id,
            arguments=arguments,
            details=_call_details(req),
        )
        raise


def _parked_token(req: McpRequest, tool: str, arguments: dict[str, Any]) -> str:
    params = req.message["params"]
    if not isinstance(params.get("inputResponses"), dict):
        raise rpc.RpcError(rpc.INVALID_PARAMS, "Invalid params: inputResponses must be an object", id=req.message["id"])
    try:
        return mrtr.verify_state(
            params["requestState"],
            agent_id=req.identity.agent_id,
            server_id=req.target.id,
            tool=tool,
            arguments=arguments,
        )
    except rpc.RpcError as exc:
        exc.id = req.message["id"]
        raise


async def _refuse_param_mismatch(
    req: McpRequest, decided: _Decided, tool: str, arguments: dict[str, Any], request_id: str, started: float
) -> Reply | None:
    """A 2026-07-28 call policy would let through (or hold) whose `Mcp-Param-*` headers disagree
    with its body: refused (400, -32020) as the transport requires of a server that reads the
    body, since a router in front of Behavry may have acted on them; no admin is asked about it.
    Checked after the decision, so that a call of a tool the agent may not use is denied and
    audited as such: its listing never showed that tool's schema, so a client sends no headers."""
    problem = await mcp_param_mismatch(req.target, tool, arguments, req.param_headers)
    if problem is None:
        return None
    await record_outcome(
        req,
        tool=tool,
        action=decided.action,
        resource=decided.resource,
        decision=decided.decision.decision,
        policy_id=decided.decision.policy_id,
        request_id=request_id,
        reason=problem,
        latency_ms=(time.perf_counter() - started) * 1000,
        details={"status": "refused", "is_error": None},
    )
    return Reply(status=400, body=rpc.error_message(req.message["id"], rpc.HEADER_MISMATCH, problem))


async def forward_call(
    req: McpRequest, *, tool: str, action: str, resource: str, policy_id: str, request_id: str, started: float
) -> Reply:
    """Send an allowed call upstream and audit its outcome (the decision event is already committed)."""

    async def outcome(
        message: dict[str, Any] | None, status: str, reason: str = "", on_wire: asyncio.Future | None = None
    ) -> None:
        result = (message or {}).get("result") or {}
        await record_outcome(
            req,
            on_wire=on_wire,
            tool=tool,
            action=action,
            resource=resource,
            decision="allow",
            policy_id=policy_id,
            request_id=request_id,
            reason=reason,
            latency_ms=(time.perf_counter() - started) * 1000,
            details={"status": status, "is_error": bool(result.get("isError")) if isinstance(result, dict) else None},
        )

    return await _forward(req, tool, outcome)


async def _forward(req: McpRequest, tool: str, outcome) -> Reply:
    """The allowed request upstream (tools/call, prompts/get, resources/read) and its answer back,
    in either pair of eras: streamed, asked about (relayed or parked), resumed, or cancelled."""
    msg_id = req.message["id"]
    if mrtr.is_our_state(req.message["params"].get("requestState")):
        return await _resume_parked(req, tool, outcome)
    try:
        upstream = await upstream_send(req, req.message)
        if upstream.streaming:
            # A 2025 upstream may ask mid-call (elicitation, sampling): relayed to a 2025 agent,
            # parked as input_required for a 2026 one.
            return Reply(stream=_relay(req, upstream, msg_id, outcome))
        message = await first_response(upstream, msg_id)
    except UpstreamAnswerTooLarge as exc:
        await outcome(None, "upstream_error", str(exc))
        return Reply(body=_failure(req, f"The upstream server's answer was refused: {exc}"))
    except UpstreamError as exc:
        await outcome(None, "upstream_error", str(exc))
        return Reply(body=_failure(req, f"Behavry could not reach the upstream server: {exc}"))
    except asyncio.CancelledError:
        reason = "the agent cancelled before the tool answered"
        await asyncio.shield(cancel_bridged(req, reason))
        await outcome(None, "cancelled", reason)
        raise
    except Exception as exc:
        # Past the decision, whatever broke (an upstream's answer Behavry could not read, a bug)
        # still ends as an audited outcome and an isError result, never a bare JSON-RPC error.
        logger.exception("forwarding %s failed", tool)
        await outcome(None, "upstream_error", f"{type(exc).__name__}: {exc}")
        return Reply(body=_failure(req, "Behavry could not complete the call upstream."))
    if req.era == "legacy" and mrtr.is_input_required(message):
        return Reply(stream=_ask_agent(req, message, outcome))
    return await answer_after_outcome(
        outcome, message, "error" if "error" in message else "ok", shape_result(req, message)
    )


async def _ask_agent(req: McpRequest, message: dict[str, Any], outcome) -> AsyncGenerator[Any, None]:
    """A 2025 agent, a 2026 upstream that answered `input_required` (tools/call, prompts/get,
    resources/read): ask the agent, re-send with the answers (proxy/mrtr.py)."""
    msg_id = req.message["id"]
    params = req.message["params"]
    assert req.session is not None, "a 2025-era agent always has a session"

    async def resend(responses: dict[str, Any], state: Any) -> dict[str, Any]:
        retry_params = {**params, "inputResponses": responses}
        if state is not None:
            retry_params["requestState"] = state
        retry = {"jsonrpc": "2.0", "id": f"behavry-retry-{uuid.uuid4().hex}", "method": req.message["method"]}
        answer = await first_response(await upstream_send(req, {**retry, "params": retry_params}), retry["id"])
        return {**answer, "id": msg_id}

    finished = False
    try:
        async for item in mrtr.ask_legacy_agent(req.session.pk, message, resend):
            if item is mrtr.KEEPALIVE:
                yield KEEPALIVE
            elif item.get("id") == msg_id and ("result" in item or "error" in item):
                await outcome(item, "error" if "error" in item else "ok")
                finished = True
                yield shape_result(req, item)
                return
            else:
                yield item  # a question for the agent, under an id Behavry owns
    except (mrtr.InputError, UpstreamError) as exc:
        await outcome(None, "upstream_error", str(exc))
        finished = True
        yield _failure(req, str(exc))
    finally:
        if not finished:
            await outcome(None, "cancelled", "the agent went away while the tool waited for its answer")


async def _resume_parked(req: McpRequest, tool: str, outcome) -> Reply:
    """A 2026 agent's retry with Behavry's requestState: the parked 2025 upstream call goes on."""
    msg_id = req.message["id"]
    params = req.message["params"]
    try:
        token = _parked_token(req, tool, params.get("arguments") or {})
        message = await mrtr.resume(token, params["inputResponses"], msg_id)
    except (rpc.RpcError, mrtr.InputError) as exc:
        text = exc.message if isinstance(exc, rpc.RpcError) else str(exc)
        await outcome(None, "upstream_error", text)
        return Reply(body=_failure(req, text))
    except asyncio.CancelledError:  # a 2026 agent hanging up is its cancellation
        await asyncio.shield(outcome(None, "cancelled", "the agent cancelled while the tool took its answer"))
        raise
    status = "input_required" if mrtr.is_input_required(message) else "error" if "error" in message else "ok"
    return await answer_after_outcome(outcome, message, status, shape_result(req, message))


async def _relay(
    req: McpRequest, upstream: UpstreamReply, msg_id: Any, outcome
) -> AsyncGenerator[dict[str, Any], None]:
    """Pass the upstream's stream through (progress, logging, its requests), auditing the response."""
    finished = False
    handed_off = False
    try:
        async for message in upstream.messages:
            if message.get("id") == msg_id and ("result" in message or "error" in message):
                if req.era == "legacy" and mrtr.is_input_required(message):
                    finished = True  # _ask_agent audits the outcome
                    async for item in _ask_agent(req, message, outcome):
                        yield item
                    return
                await outcome(message, "error" if "error" in message else "ok")
                finished = True
                yield shape_result(req, message)
                return
            if req.era == "modern" and mrtr.is_server_request(message):
                if message["method"] not in mrtr.INPUT_METHODS:
                    # ping or anything else a 2026 agent cannot be asked: answered here, not parked.
                    await _answer_upstream_request(req, message)
                    continue
                # A 2025 upstream asking mid-call; a 2026 agent takes questions only as MRTR.
                question = _park(req, upstream, message)
                await outcome(None, "input_required", "the tool asked the agent for input")
                finished = handed_off = True
                yield _result(req, msg_id, question)
                return
            yield message
        await outcome(None, "upstream_error", "upstream ended its stream without answering")
        finished = True
        yield _failure(req, "The tool's server ended its answer without a result.")
    except UpstreamError as exc:
        await outcome(None, "upstream_error", str(exc))
        finished = True
        yield _failure(req, f"The tool's server failed: {exc}")
    except Exception as exc:
        if not finished and not isinstance(exc, GeneratorExit):
            await outcome(None, "upstream_error", f"{type(exc).__name__}")
            finished = True
            yield _failure(req, "The tool's server broke off its answer.")
            return
        raise
    finally:
        if not finished:
            reason = "the agent went away before the tool answered"
            await asyncio.shield(cancel_bridged(req, reason))
            await outcome(None, "cancelled", reason)
        if not handed_off:
            await upstream.aclose()


def _parked_ttl(read_timeout: float | None) -> float:
    # The upstream's read timeout runs while the call is parked; leave a margin for the retry.
    if not read_timeout:
        return mrtr.HOLD_SECONDS
    return max(1.0, min(mrtr.HOLD_SECONDS, read_timeout - 5))


async def _answer_upstream_request(req: McpRequest, request: dict[str, Any]) -> None:
    if request["method"] == "ping":
        answer = rpc.result_message(request["id"], {})
    else:
        answer = rpc.error_message(request["id"], rpc.METHOD_NOT_FOUND, f"Method not found: {request['method']}")
    try:
        await post_on_call_session(req, answer)
    except UpstreamError as exc:
        logger.info("could not answer the upstream's %s: %s", request["method"], exc)


def _park(req: McpRequest, upstream: UpstreamReply, question: dict[str, Any]) -> dict[str, Any]:
    tool, arguments = _policy_target(req)
    parked = mrtr.Parked(
        agent_id=req.identity.agent_id,
        server_id=req.target.id,
        tool=tool,
        args_hash=mrtr.arguments_hash(arguments),
        upstream_call_id=req.message["id"],
        ttl=_parked_ttl(req.target.read_timeout),
        messages=upstream.messages,
        close=upstream.aclose,
        send_upstream=functools.partial(post_on_call_session, req),
        cancel_upstream=functools.partial(cancel_bridged, req, "the agent's call waiting for its answer ended"),
    )
    return mrtr.park(parked, question)


# --- lifecycle: initialize / server/discover -----------------------------------------------------


async def _upstream_capabilities(req: McpRequest) -> dict[str, Any]:
    """Capabilities and instructions the upstream declares (opening its 2025-era session if
    needed), less what Behavry cannot deliver to this agent (deliverable_capabilities)."""
    era, discovered, session = await _era_and_session(req)
    if era == "modern":
        if not discovered:
            probe = {"jsonrpc": "2.0", "id": "behavry-discover", "method": "server/discover", "params": {}}
            wrapped, headers = modern_request(
                probe, client_info=req.client_info, client_capabilities=req.client_capabilities
            )
            response = await first_response(await post(req.target, wrapped, headers=headers), "behavry-discover")
            discovered = response.get("result") or {}
        info = {"capabilities": discovered.get("capabilities") or {}, "instructions": discovered.get("instructions")}
    else:
        assert session is not None, "a 2025-era upstream always comes with its session"
        info = session.upstream_info or {}
    capabilities = info.get("capabilities")
    return {**info, "capabilities": deliverable_capabilities(capabilities, agent=req.era, upstream=era)}


def deliverable_capabilities(capabilities: Any, *, agent: str, upstream: str) -> dict[str, Any]:
    """The upstream's capabilities less the change notifications Behavry cannot carry.

    `listChanged` and `resources.subscribe` promise notifications. Behavry relays them only from a
    2025-era upstream's GET stream to a 2025-era agent's; it offers no `subscriptions/listen`
    (2026-07-28), and a 2026-07-28 upstream has no GET stream. Promising them anyway leaves a
    client waiting for updates that never come, or calling `resources/subscribe` into -32601.
    """
    if not isinstance(capabilities, dict):
        return {}
    if agent == "legacy" and upstream == "legacy":
        return capabilities
    out = dict(capabilities)
    for name in ("tools", "prompts", "resources"):
        if isinstance(out.get(name), dict):
            out[name] = {k: v for k, v in out[name].items() if k not in ("listChanged", "subscribe")}
    return out


async def handle_initialize(req: McpRequest) -> Reply:
    msg_id = req.message["id"]
    params = req.message["params"]
    requested = params.get("protocolVersion")
    capabilities = params.get("capabilities") or {}
    client_info = params.get("clientInfo") or {}
    if not isinstance(requested, str) or not isinstance(capabilities, dict) or not isinstance(client_info, dict):
        raise rpc.RpcError(
            rpc.INVALID_PARAMS, "Invalid params: initialize needs protocolVersion, capabilities, clientInfo", id=msg_id
        )
    version = requested if requested in rpc.NEGOTIATED_LEGACY_VERSIONS else rpc.LATEST_LEGACY
    session, evicted = await database_sync_to_async(agent_session_open)(
        agent_id=req.identity.agent_id,
        server_id=req.target.id,
        era=SessionEra.LEGACY,
        protocol_version=version,
        client_info={"clientInfo": client_info, "capabilities": capabilities},
    )
    sessions.end_upstream_soon(req.target, evicted)  # past BEHAVRY_MCP_MAX_SESSIONS_PER_AGENT
    req.session = session
    try:
        info = await _upstream_capabilities(req)
    except UpstreamError as exc:
        await database_sync_to_async(AgentSession.objects.filter(pk=session.pk).update)(
            ended_at=session.created_at, end_reason="upstream unavailable"
        )
        raise rpc.RpcError(
            rpc.INTERNAL_ERROR, f"Upstream {req.target.slug} unavailable: {exc}", status=502, id=msg_id
        ) from exc
    if session.upstream_info != info:
        await database_sync_to_async(AgentSession.objects.filter(pk=session.pk).update)(upstream_info=info)
    await record_best_effort(
        req,
        kind="decision",
        action="initialize",
        decision="allow",
        policy_id=PASSTHROUGH,
        details={
            "protocol_version": version,
            "client": client_info,
            # Evictions are recorded here, on the event that caused them, not as events of their own.
            **({"evicted_sessions": [ended.id for ended in evicted]} if evicted else {}),
        },
    )
    result = {
        "protocolVersion": version,
        "capabilities": info.get("capabilities") or {},
        "serverInfo": {**SERVER_INFO, "title": f"Behavry → {req.target.name}"},
    }
    if info.get("instructions"):
        result["instructions"] = info["instructions"]
    return Reply(body=_result(req, msg_id, result), headers={"Mcp-Session-Id": session.pk})


async def handle_discover(req: McpRequest) -> Reply:
    msg_id = req.message["id"]
    try:
        info = await _upstream_capabilities(req)
    except UpstreamError as exc:
        raise rpc.RpcError(
            rpc.INTERNAL_ERROR, f"Upstream {req.target.slug} unavailable: {exc}", status=502, id=msg_id
        ) from exc
    result = {
        "supportedVersions": list(rpc.MODERN_VERSIONS),
        "capabilities": info.get("capabilities") or {},
        "resultType": "complete",
        "cacheScope": "private",
        "ttlMs": 0,
        "_meta": {rpc.META_SERVER_INFO: SERVER_INFO},
    }
    if info.get("instructions"):
        result["instructions"] = info["instructions"]
    return Reply(body=_result(req, msg_id, result))


# --- tools/list, named reads, everything else ----------------------------------------------------


def _filter_tools(req: McpRequest, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    synced = tool_catalog_sync(server=_server_row(req.target.id), definitions=[t for t in tools if isinstance(t, dict)])
    actions = {t.name: t.action for t in synced}
    engine = current_engine()
    return [
        t
        for t in tools
        if isinstance(t, dict)
        and isinstance(t.get("name"), str)  # a list or object as a name is unhashable: not a tool
        and t["name"] in actions
        and engine.could_allow(
            agent_id=req.identity.agent_id,
            roles=req.identity.roles,
            server=req.target.slug,
            tool=t["name"],
            action=actions[t["name"]],
        )
    ]


def _server_row(server_id: int):
    from proxy.models import UpstreamServer

    return UpstreamServer.objects.get(pk=server_id)


async def handle_tools_list(req: McpRequest) -> Reply:
    msg_id = req.message["id"]
    message = await _forward_for_response(req)
    result = message.get("result")
    if isinstance(result, dict) and isinstance(result.get("tools"), list):
        try:
            visible = await database_sync_to_async(_filter_tools)(req, result["tools"])
        except Exception:
            logger.exception("tools/list filtering failed; listing nothing")
            stats["fail_closed"] += 1
            visible = []
        offered = len(result["tools"])
        result = {**result, "tools": visible}
        if req.era == "modern":
            result["cacheScope"] = "private"  # filtered per agent: shared caches must not reuse it
        message = {**message, "result": result}
        await record_best_effort(
            req,
            kind="decision",
            action="list",
            tool="",
            decision="allow",
            policy_id=PASSTHROUGH,
            details={"method": "tools/list", "listed": len(visible), "offered": offered},
        )
    return Reply(body=shape_result(req, {**message, "id": msg_id}))


async def _forward_for_response(req: McpRequest) -> dict[str, Any]:
    """Lists, completion and the other requests that name nothing for policy: sent up, answered."""
    try:
        reply = await upstream_send(req, req.message)
        # A 2025 upstream's own requests before its answer (a completion handler asking
        # roots/list, a ping) are answered at once: a ping as such, anything else "method not
        # found". Only tools/call, prompts/get and resources/read carry questions to the agent
        # (proxy/mrtr.py); unanswered, the upstream would hold the agent until its own timeout.
        # Its progress and log notifications here are dropped.
        answer = functools.partial(_answer_upstream_request, req)
        return await first_response(reply, req.message["id"], answer_request=answer)
    except asyncio.CancelledError:
        # The agent cancelled: closing the upstream exchange (first_response does) is a 2026
        # upstream's cancel; a 2025 one on a bridge session must be told, as for tools/call.
        await asyncio.shield(cancel_bridged(req, "the agent cancelled before the upstream answered"))
        raise
    except UpstreamError as exc:
        raise rpc.RpcError(
            rpc.UPSTREAM_FAILED, f"Upstream {req.target.slug} failed: {exc}", status=200, id=req.message["id"]
        ) from exc


async def handle_named_read(req: McpRequest) -> Reply:
    """resources/read and prompts/get: decided like a read-only tool named `resource:<uri>` / `prompt:<name>`."""
    msg_id = req.message["id"]
    params = req.message["params"]
    method = req.message["method"]
    key = "uri" if method == "resources/read" else "name"
    value = params.get(key)
    if not isinstance(value, str) or not value:
        raise rpc.RpcError(rpc.INVALID_PARAMS, f"Invalid params: '{key}' must be a non-empty string", id=msg_id)
    tool, arguments = _policy_target(req)
    request_id = uuid.uuid4().hex
    await _check_parked_state(req, tool, arguments, request_id)
    await _decide_read(req, tool, arguments, request_id, resource=value if method == "resources/read" else None)
    return await _forward(req, tool, _no_outcome)


async def _decide_read(
    req: McpRequest, tool: str, arguments: dict[str, Any], request_id: str, *, resource: str | None
) -> None:
    """Decide a read (or a completion, a subscription) of `tool` (`prompt:<name>`, `resource:<uri>`)
    with the same decision step as tools/call: decision timeout and audit-before-forward included.
    Refused, it raises a JSON-RPC error (their results have no error form) with the same `behavry`
    details a refused tool call carries."""
    decided = await _decide(
        req,
        tool=tool,
        arguments=arguments,
        request_id=request_id,
        started=time.perf_counter(),
        action="read",
        resource=resource,
    )
    decision = decided.decision
    if decision.decision != "allow":
        raise rpc.RpcError(
            rpc.POLICY_DENIED,
            f"Denied by Behavry: {decision.reason} (policy {decision.policy_id})",
            status=200,
            id=req.message["id"],
            data={"behavry": {"decision": "deny", "policy_id": decision.policy_id, "reason": decision.reason}},
        )


async def _no_outcome(*_args: Any, **_kwargs: Any) -> None:
    """Reads are audited by their decision event alone (no outcome event)."""


def _named_by(req: McpRequest) -> tuple[str, str | None] | None:
    """(policy name, resource) of a method that names a prompt or resource without reading it:
    a completion for a prompt's or resource template's argument, a subscription to a resource.
    Decided like a read of it, so an agent refused `prompt:x` cannot probe it through these."""
    params = req.message.get("params") or {}
    method = req.message.get("method")
    if method == "completion/complete":
        ref = params.get("ref")
        if isinstance(ref, dict) and ref.get("type") == "ref/prompt":
            return f"prompt:{ref.get('name', '')}", None
        if isinstance(ref, dict) and ref.get("type") == "ref/resource":
            uri = str(ref.get("uri", ""))
            return f"resource:{uri}", uri
    elif method in ("resources/subscribe", "resources/unsubscribe"):
        uri = str(params.get("uri", ""))
        return f"resource:{uri}", uri
    return None


async def handle_passthrough(req: McpRequest) -> Reply:
    """Methods that name nothing policy can match (lists, log level), passed through and audited;
    those that name a prompt or resource (_named_by) are decided first, like a read of it."""
    named = _named_by(req)
    if named is not None:
        tool, resource = named
        await _decide_read(req, tool, {}, uuid.uuid4().hex, resource=resource)
        return Reply(body=shape_result(req, await _forward_for_response(req)))  # its decision event is the audit
    message = await _forward_for_response(req)
    await record_best_effort(
        req,
        kind="decision",
        action=req.message["method"],
        decision="allow",
        policy_id=PASSTHROUGH,
        details={"method": req.message["method"], "upstream_error": "error" in message},
    )
    return Reply(body=shape_result(req, message))


def _refused(text: str) -> Reply:
    return Reply(status=400, body=rpc.error_message(None, rpc.INVALID_REQUEST, text))


async def handle_client_message(req: McpRequest) -> Reply:
    """Notifications and responses from the agent (cancellation, answers to upstream requests).

    Nothing here is decided by policy or audited, so only what needs neither is relayed: MCP's
    notifications (`notifications/...`), and in the 2025 era a session's answers to what its
    upstream asked. A request method without an id (`tools/call` sent as a notification) would
    otherwise reach the upstream undecided; a stateless agent's posted response would answer a
    question parked in its bridge session without the retry that decides the call again
    (proxy/mrtr.py). Both are refused with 400, as the transport allows for input a server
    cannot accept."""
    method = req.message.get("method")
    if method is not None and not method.startswith("notifications/"):
        return _refused(f"Invalid Request: {method} is a request and needs an 'id'")
    if method is None and req.era == "modern":
        return _refused("Invalid Request: in 2026-07-28 a client answers a server's question by retrying its request")
    if req.session is not None and mrtr.is_answer(req.message):
        await mrtr.deliver_answer(req.session.pk, req.message)  # to the stream that asked (proxy/mrtr.py)
        return Reply(status=202)
    if method == "notifications/initialized":
        return Reply(status=202)  # Behavry completed the upstream handshake itself
    if method == "notifications/cancelled" and req.session is not None:
        request_id = (req.message.get("params") or {}).get("requestId")
        if request_id is not None:
            await inflight.cancel(req.session.pk, request_id)
    try:
        era, _ = await upstream_era(req.target)
    except UpstreamError as exc:
        logger.info("could not relay %s upstream: %s", method or "response", exc)
        return Reply(status=202)  # as when the relay itself fails: a notification has no answer
    if era == "modern" and method is not None:
        return Reply(status=202)  # a stateless upstream takes no notifications over HTTP
    try:
        await upstream_post(req, req.message)
    except UpstreamError as exc:
        logger.info("could not relay %s upstream: %s", method or "response", exc)
    return Reply(status=202)


HANDLERS = {
    "initialize": handle_initialize,
    "server/discover": handle_discover,
    "tools/call": handle_tools_call,
    "tools/list": handle_tools_list,
    "resources/read": handle_named_read,
    "prompts/get": handle_named_read,
}
