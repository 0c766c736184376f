"""Server-to-client requests across protocol eras: MRTR on one side, mid-call requests on the other.

A 2025-era server asks its client something (elicitation, sampling, roots) by sending a JSON-RPC
request on the open tools/call stream and reading the answer from a later POST. A 2026-07-28 server
instead ends the call with `resultType: "input_required"` (`inputRequests` + an opaque
`requestState`); the client calls again with `inputResponses` and the echoed `requestState` (MRTR).
When the agent and the upstream are on different eras, Behavry translates:

- **2025 agent, 2026 upstream** (`ask_legacy_agent`): each input request goes to the agent on the
  call's SSE stream under an id Behavry owns (`behavry-input:<nonce>:<key>`). The agent answers by
  POST, possibly to another proxy process, so answers go through the process bus (proxy/inflight)
  to the process holding the stream. Then the call is re-sent upstream with the answers.
- **2026 agent, 2025 upstream** (`park` / `resume`): the upstream's stream stays open in the process
  that holds it ("parked"), and the agent gets an `input_required` result whose `requestState` is
  Behavry's own: signed (SECRET_KEY), bound to the agent, the upstream, the tool and a hash of the
  arguments, and valid for HOLD_SECONDS. The agent's retry goes through policy like any call, then
  its answers are posted to the upstream session by the holding process, which reads on to the
  next question or the result and hands it back (directly, or over a reply channel).

A `requestState` is attacker-controlled input (MRTR spec): anything that does not verify is refused
with -32602, and a state is good for one retry (the parked call is taken by the first).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from channels.layers import get_channel_layer
from django.core import signing

from proxy import inflight
from proxy import jsonrpc as rpc

logger = logging.getLogger("behavry.proxy")

INPUT_ID_PREFIX = "behavry-input:"
STATE_PREFIX = "behavry1."
STATE_SALT = "behavry.proxy.mrtr"
HOLD_SECONDS = 600  # how long an agent has to answer (2025 agent) or to retry (2026 agent)
MAX_ROUNDS = 16  # questions per call before Behavry gives up on an upstream that keeps asking
# Each parked call holds an upstream connection; an agent that never retries must not pile them up.
MAX_PARKED_PER_AGENT = 20
KEEPALIVE_SECONDS = 15
ACK_SECONDS = 5  # how long a retry waits for some process to say it holds the parked call
INPUT_METHODS = {"elicitation/create", "sampling/createMessage", "roots/list"}

KEEPALIVE = object()  # yielded while waiting; proxy.handlers turns it into an SSE comment


class InputError(Exception):
    """The exchange cannot go on; the text is for the agent, as an isError result."""


# --- shared -------------------------------------------------------------------------------------


def is_input_required(message: dict[str, Any]) -> bool:
    result = message.get("result")
    return isinstance(result, dict) and result.get("resultType") == "input_required"


def is_server_request(message: dict[str, Any]) -> bool:
    return isinstance(message.get("method"), str) and "id" in message


def arguments_hash(arguments: Any) -> str:
    return hashlib.sha256(json.dumps(arguments, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# --- 2025 agent, 2026 upstream --------------------------------------------------------------------

_answers: dict[tuple[str, str], asyncio.Future] = {}


def is_answer(message: dict[str, Any]) -> bool:
    msg_id = message.get("id")
    return "method" not in message and isinstance(msg_id, str) and msg_id.startswith(INPUT_ID_PREFIX)


async def deliver_answer(session_id: str, message: dict[str, Any]) -> None:
    """An agent's answer to a question Behavry put to it: to the waiting stream, wherever it is."""
    if _deliver_answer_local(session_id, message):
        return
    await inflight.broadcast({"type": "mcp.input.answer", "session": session_id, "message": message})


def _deliver_answer_local(session_id: str, message: dict[str, Any]) -> bool:
    future = _answers.get((session_id, message["id"]))
    if future is None or future.done():
        return False
    future.set_result(message)
    return True


async def _on_answer_broadcast(message: dict[str, Any]) -> None:
    answer = message.get("message")
    if isinstance(answer, dict) and isinstance(answer.get("id"), str):
        _deliver_answer_local(str(message.get("session", "")), answer)


def _input_requests(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    requests = result.get("inputRequests")
    if not isinstance(requests, dict) or not requests:
        raise InputError("The tool's server asked for input without saying what (no inputRequests).")
    for key, request in requests.items():
        if not isinstance(request, dict) or request.get("method") not in INPUT_METHODS:
            raise InputError(f"The tool's server asked for input Behavry cannot relay ({key!r}).")
    return requests


async def ask_legacy_agent(
    session_id: str,
    message: dict[str, Any],
    resend: Callable[[dict[str, Any], Any], Awaitable[dict[str, Any]]],
) -> AsyncGenerator[Any, None]:
    """Put an upstream's `input_required` questions to a 2025 agent, re-send, repeat; yield the end.

    Yields the questions (JSON-RPC requests) and KEEPALIVE while waiting, then the upstream's final
    response. `resend(input_responses, request_state)` calls the upstream again and returns its
    response. Raises InputError when the exchange cannot complete.
    """
    inflight.ensure_listening()
    for _round in range(MAX_ROUNDS):
        if not is_input_required(message):
            yield message
            return
        result = message["result"]
        requests = _input_requests(result)
        nonce = secrets.token_urlsafe(9)
        loop = asyncio.get_running_loop()
        waiting: dict[str, tuple[str, asyncio.Future]] = {}
        try:
            for key, request in requests.items():
                question_id = f"{INPUT_ID_PREFIX}{nonce}:{key}"
                future = loop.create_future()
                _answers[(session_id, question_id)] = future
                waiting[key] = (question_id, future)
                yield {
                    "jsonrpc": "2.0",
                    "id": question_id,
                    "method": request["method"],
                    "params": request.get("params") or {},
                }
            responses: dict[str, Any] = {}
            deadline = time.monotonic() + HOLD_SECONDS
            for key, (_question_id, future) in waiting.items():
                while not future.done():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise InputError("The agent did not answer the tool's question in time.")
                    try:
                        await asyncio.wait_for(asyncio.shield(future), timeout=min(KEEPALIVE_SECONDS, left))
                    except TimeoutError:
                        yield KEEPALIVE
                answer = future.result()
                if "error" in answer or not isinstance(answer.get("result"), dict):
                    error = answer.get("error") if isinstance(answer.get("error"), dict) else {}
                    raise InputError(
                        f"The agent could not answer the tool's question: {error.get('message', 'no result')}"
                    )
                responses[key] = answer["result"]
        finally:
            for question_id, _future in waiting.values():
                _answers.pop((session_id, question_id), None)
        message = await resend(responses, result.get("requestState"))
    raise InputError(f"The tool's server kept asking for input ({MAX_ROUNDS} rounds); Behavry stopped the call.")


# --- 2026 agent, 2025 upstream --------------------------------------------------------------------


@dataclass
class Parked:
    """A 2025 upstream's tools/call stream, open in this process, waiting for the agent's answers."""

    agent_id: int
    server_id: int
    tool: str
    args_hash: str
    upstream_call_id: Any  # the id Behavry used upstream: the final response carries it
    messages: AsyncIterator[dict[str, Any]]
    close: Callable[[], Coroutine[Any, Any, None]]
    send_upstream: Callable[[dict[str, Any]], Awaitable[None]]  # posts an answer to the upstream session
    # Tells the 2025 upstream the call is off (notifications/cancelled): closing its stream does not.
    cancel_upstream: Callable[[], Awaitable[None]] | None = None
    pending: dict[str, Any] = field(default_factory=dict)  # input key -> the upstream request's id
    # How long the agent has. No longer than the upstream stream survives unread: its read timeout
    # keeps running while the call waits, so past it the answer would reach a broken stream.
    ttl: float = HOLD_SECONDS
    token: str = ""
    expiry: asyncio.TimerHandle | None = None


_parked: dict[str, Parked] = {}
# Tokens this process has already resumed or dropped, so a replayed state is refused at once
# instead of after ACK_SECONDS of asking the other processes. Bounded: oldest forgotten first.
_spent: dict[str, None] = {}
_SPENT_MAX = 10_000


def _spend(token: str) -> Parked | None:
    parked = _parked.pop(token, None)
    _spent[token] = None
    while len(_spent) > _SPENT_MAX:
        _spent.pop(next(iter(_spent)))
    return parked


def is_our_state(state: Any) -> bool:
    return isinstance(state, str) and state.startswith(STATE_PREFIX)


def park(parked: Parked, first_question: dict[str, Any]) -> dict[str, Any]:
    """Hold `parked` in this process; the `input_required` result to send the agent instead."""
    inflight.ensure_listening()
    mine = [token for token, other in _parked.items() if other.agent_id == parked.agent_id]
    for token in mine[: max(0, len(mine) - MAX_PARKED_PER_AGENT + 1)]:  # oldest first (dict order)
        _drop(token)
    parked.token = secrets.token_urlsafe(18)
    key = "q0"  # one question per round: a 2025 server asks one at a time and waits
    parked.pending = {key: first_question["id"]}
    _parked[parked.token] = parked
    loop = asyncio.get_running_loop()
    parked.expiry = loop.call_later(parked.ttl, lambda: loop.create_task(_expire(parked.token)))
    claims = {"t": parked.token, "a": parked.agent_id, "s": parked.server_id, "n": parked.tool, "h": parked.args_hash}
    state = signing.dumps(
        {**claims, "x": int(time.time() + parked.ttl)},
        salt=STATE_SALT,
        compress=False,
    )
    return {
        "resultType": "input_required",
        "inputRequests": {key: {"method": first_question["method"], "params": first_question.get("params") or {}}},
        "requestState": STATE_PREFIX + state,
    }


async def _expire(token: str) -> None:
    # The call's own outcome event ("input_required") already says it stopped at a question.
    parked = _spend(token)
    if parked is not None:
        logger.info("parked call %s expired after %s s without the agent's answer", parked.tool, parked.ttl)
        await _call_off(parked)


async def _call_off(parked: Parked) -> None:
    """End a parked call for good: tell the upstream, then close its stream."""
    try:
        if parked.cancel_upstream is not None:
            await parked.cancel_upstream()
    finally:
        await parked.close()


def _drop(token: str) -> None:
    parked = _spend(token)
    if parked is None:
        return
    if parked.expiry is not None:
        parked.expiry.cancel()
    logger.info("parked call %s dropped: agent %s has %s waiting", parked.tool, parked.agent_id, MAX_PARKED_PER_AGENT)
    asyncio.get_running_loop().create_task(_call_off(parked))


def verify_state(state: str, *, agent_id: int, server_id: int, tool: str, arguments: Any) -> str:
    """The parked call's token, if `state` is Behavry's, unexpired and issued for exactly this call."""
    try:
        claims = signing.loads(state.removeprefix(STATE_PREFIX), salt=STATE_SALT, max_age=HOLD_SECONDS)
    except signing.SignatureExpired:
        raise rpc.RpcError(
            rpc.INVALID_PARAMS, "Invalid params: requestState has expired; call the tool again"
        ) from None
    except signing.BadSignature:
        raise rpc.RpcError(rpc.INVALID_PARAMS, "Invalid params: requestState was not issued by Behavry") from None
    if time.time() > claims.get("x", 0):
        raise rpc.RpcError(rpc.INVALID_PARAMS, "Invalid params: requestState has expired; call the tool again")
    bound = (claims.get("a"), claims.get("s"), claims.get("n"), claims.get("h"))
    if bound != (agent_id, server_id, tool, arguments_hash(arguments)):
        raise rpc.RpcError(rpc.INVALID_PARAMS, "Invalid params: requestState belongs to a different call")
    return str(claims["t"])


async def resume(token: str, responses: Any, retry_id: Any) -> dict[str, Any]:
    """Hand the agent's answers to the parked call (in whichever process holds it); its next step.

    Returns the JSON-RPC message for the agent: the final result, or another `input_required`.
    """
    if not isinstance(responses, dict):
        raise rpc.RpcError(rpc.INVALID_PARAMS, "Invalid params: inputResponses must be an object", id=retry_id)
    if token in _parked:
        return await _continue(token, responses, retry_id)
    layer = get_channel_layer()
    if layer is None or token in _spent:
        raise InputError("The call waiting for this answer is no longer held; call the tool again.")
    try:
        reply = await layer.new_channel()
        await inflight.broadcast(
            {"type": "mcp.input.resume", "token": token, "responses": responses, "retry_id": retry_id, "reply": reply}
        )
        ack = await asyncio.wait_for(layer.receive(reply), timeout=ACK_SECONDS)
        if ack.get("kind") != "ack":
            raise TimeoutError
        # Two steps: the holder goes on only after this "go", so a late ack (after this retry has
        # told the agent to call again) leaves the call parked instead of running it a second time.
        await layer.send(ack["go"], {"type": "mcp.input.go"})
        try:
            while True:  # the holder reports "alive" while the tool works, however long that takes
                done = await asyncio.wait_for(layer.receive(reply), timeout=3 * KEEPALIVE_SECONDS)
                if done.get("kind") != "alive":
                    break
        except asyncio.CancelledError:
            # The agent hung up on the retry (2026-07-28: that is its cancel); the holder calls the
            # tool off. Shielded: this task is already being cancelled.
            await asyncio.shield(_send_quietly(layer, ack["go"], {"type": "mcp.input.cancel"}))
            raise
    except TimeoutError:
        raise InputError("The call waiting for this answer is no longer held; call the tool again.") from None
    except Exception as exc:  # the channel layer itself failed (Redis down): say so, do not crash
        logger.exception("could not reach the process holding parked call")
        raise InputError("Behavry could not reach the call waiting for this answer; call the tool again.") from exc
    if done.get("kind") == "error":
        raise InputError(str(done.get("text")))
    return done["message"]


async def _on_resume_broadcast(message: dict[str, Any]) -> None:
    token = message.get("token")
    if not isinstance(token, str) or token not in _parked:
        return  # another process holds it (or nobody does: the retry times out on the ack)
    layer = get_channel_layer()
    reply = message["reply"]
    go = await layer.new_channel()
    await layer.send(reply, {"type": "mcp.input.reply", "kind": "ack", "go": go})
    try:
        await asyncio.wait_for(layer.receive(go), timeout=ACK_SECONDS)
    except TimeoutError:
        return  # the retry gave up before our ack arrived; the call stays parked for a new one
    work = asyncio.ensure_future(_continue(token, message.get("responses") or {}, message.get("retry_id")))
    called_off = asyncio.ensure_future(layer.receive(go))  # the retrying process says its agent left
    try:
        while not work.done():
            await asyncio.wait({work, called_off}, timeout=KEEPALIVE_SECONDS, return_when=asyncio.FIRST_COMPLETED)
            if called_off.done() and not work.done():
                if called_off.exception() is None:
                    work.cancel()  # _continue calls the tool off upstream
                    await asyncio.wait({work})
                    return
                called_off = asyncio.get_running_loop().create_future()  # Redis hiccup: keep serving
            if not work.done():
                await layer.send(reply, {"type": "mcp.input.reply", "kind": "alive"})
    finally:
        called_off.cancel()
    try:
        await layer.send(reply, {"type": "mcp.input.reply", "kind": "done", "message": work.result()})
    except InputError as exc:
        await layer.send(reply, {"type": "mcp.input.reply", "kind": "error", "text": str(exc)})


async def _send_quietly(layer, channel: str, message: dict[str, Any]) -> None:
    try:
        await layer.send(channel, message)
    except Exception:  # best effort: the held call still ends at its upstream's read timeout
        logger.exception("could not tell the holding process that the retry was cancelled")


async def _continue(token: str, responses: dict[str, Any], retry_id: Any) -> dict[str, Any]:
    parked = _spend(token)
    if parked is None:
        raise InputError("The call waiting for this answer is no longer held; call the tool again.")
    if parked.expiry is not None:
        parked.expiry.cancel()
    try:
        for key, upstream_request_id in parked.pending.items():
            answer = responses.get(key)
            if isinstance(answer, dict):
                reply = {"jsonrpc": "2.0", "id": upstream_request_id, "result": answer}
            else:
                reply = rpc.error_message(upstream_request_id, rpc.INVALID_PARAMS, "The agent gave no answer")
            await parked.send_upstream(reply)
        async for message in parked.messages:
            if message.get("id") == parked.upstream_call_id and ("result" in message or "error" in message):
                await parked.close()
                return {**message, "id": retry_id}
            if is_server_request(message):
                return rpc.result_message(retry_id, park(parked, message))
            # Progress and log notifications have no stream to go to: the retry is a plain answer.
    except asyncio.CancelledError:
        asyncio.get_running_loop().create_task(_call_off(parked))  # the retry went away; so does the call
        raise
    except Exception as exc:
        await parked.close()
        raise InputError(f"The tool's server failed while taking the agent's answer ({type(exc).__name__}).") from exc
    await parked.close()
    raise InputError("The tool's server ended its answer without a result.")


inflight.subscribe("mcp.input.answer", _on_answer_broadcast)
inflight.subscribe("mcp.input.resume", _on_resume_broadcast)
