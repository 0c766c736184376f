"""The MCP endpoint `/mcp/<server>`: a plain ASGI app in the Channels router.

It owns the transport: HTTP method, Host/Origin, bearer auth, body limit, Accept rules, the
protocol era of the agent (2025 sessions or 2026-07-28 stateless headers), and streaming replies.
What to do with each message is in proxy/handlers.py.

A plain ASGI app rather than AsyncHttpConsumer, because the endpoint must notice the client going
away mid-response (in the 2026-07-28 era a disconnect *is* the cancellation) and stream SSE
without buffering.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from typing import Any
from urllib.parse import urlsplit

from channels.db import database_sync_to_async
from django.conf import settings
from django.http.request import split_domain_port, validate_host

from agents.models import AgentSession
from agents.services import agent_session_end
from behavry.dbthreads import on_db_thread
from behavry.tokens import API_KEY_KIND
from proxy import handlers, inflight, sessions
from proxy import jsonrpc as rpc
from proxy.identity import cached_identity, cached_target, identity_for_token, target_for_slug
from proxy.upstream import CLIENT_ERRORS, MCP_PARAM_PREFIX, UpstreamError, legacy_listen, legacy_terminate

logger = logging.getLogger("behavry.proxy")

# Routing headers, each allowed once (ASGI gives names in lower case).
_ROUTING_HEADERS = frozenset({b"mcp-protocol-version", b"mcp-method", b"mcp-name", b"mcp-session-id"})
KEEPALIVE_SECONDS = 15  # SSE comment interval on idle streams (the Python SDK's own ping interval)
SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
]


# Open GET relays per (agent, upstream) in this process (BEHAVRY_MCP_MAX_GET_STREAMS_PER_AGENT).
_get_streams: collections.Counter[tuple[int, int]] = collections.Counter()


class HttpError(Exception):
    def __init__(self, status: int, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None):
        self.status, self.body, self.headers = status, body, headers or {}


def _http_error(status: int, message: str, code: int = rpc.INVALID_REQUEST, headers: dict | None = None) -> HttpError:
    return HttpError(status, rpc.error_message(None, code, message), headers)


def _json_bytes(message: Any) -> bytes:
    # A lone surrogate (from a \udXXX escape an agent or upstream sent) cannot be UTF-8 encoded;
    # backslashreplace writes it back as that same JSON escape, so the output stays valid JSON.
    return _compact_json(message).encode("utf-8", "backslashreplace")


_compact_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _sse_event(message: Any) -> bytes:
    return b"event: message\ndata: " + _json_bytes(message) + b"\n\n"


async def _send_json(send, status: int, body: dict[str, Any] | None, headers: dict[str, str]) -> None:
    payload = _json_bytes(body) if body is not None else b""
    raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    if body is not None:
        raw_headers.append((b"content-type", b"application/json"))
    raw_headers.append((b"content-length", str(len(payload)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})


def _check_no_header_twice(msg_id, raw_headers) -> None:
    """No routing or `Mcp-Param-*` header may come twice: a router in front that reads the first
    copy and Behavry reading the last would act on different values (400, -32020)."""
    seen: set[bytes] = set()
    for name, _value in raw_headers:
        key = name.lower()
        if key in _ROUTING_HEADERS or key.startswith(b"mcp-param-"):
            if key in seen:
                text = f"{key.decode('latin-1')} header appears more than once"
                raise HttpError(400, rpc.error_message(msg_id, rpc.HEADER_MISMATCH, text))
            seen.add(key)


def _answer_status(req: handlers.McpRequest, status: int, body: dict[str, Any] | None) -> int:
    """The HTTP status of a JSON answer: for a 2026-07-28 agent, a JSON-RPC error's own status
    (rpc.MODERN_ERROR_STATUS), whether Behavry or the upstream raised it."""
    if req.era != "modern" or body is None:
        return status
    error = body.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    if type(code) is not int:  # an upstream's odd code (a list, a bool) is no key
        return status
    return rpc.MODERN_ERROR_STATUS.get(code, status)


class McpEndpoint:
    """ASGI callable. One instance serves every upstream; the slug comes from the URL route."""

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            await self._handle(scope, receive, send, headers)
        except HttpError as exc:
            await _send_json(send, exc.status, exc.body, exc.headers)

    async def _handle(self, scope, receive, send, headers: dict[str, str]) -> None:
        method = scope["method"]
        if method not in ("POST", "GET", "DELETE"):
            raise _http_error(405, "Method not allowed", headers={"Allow": "POST, GET, DELETE"})
        self._check_host_and_origin(headers)
        identity = await self._authenticate(headers)
        slug = scope.get("url_route", {}).get("kwargs", {}).get("slug", "")
        hit, target = cached_target(slug)
        if not hit:
            target = await on_db_thread(target_for_slug, slug)  # a read: any database thread
        if target is None:
            raise _http_error(404, f"No enabled upstream server named {slug!r}")
        if method == "GET":
            await self._get(send, receive, headers, identity, target)
            return
        if method == "DELETE":
            await self._delete(send, headers, identity, target)
            return
        body = await self._read_body(receive, headers)
        # Again, now that the body is in: a suspension or revocation while it arrived applies to
        # this request too (a cache hit, microseconds; the body may have taken up to its timeout).
        identity = await self._authenticate(headers)
        accept = headers.get("accept", "")
        if not (("application/json" in accept and "text/event-stream" in accept) or "*/*" in accept):
            raise _http_error(406, "Not Acceptable: Accept must list application/json and text/event-stream")
        try:
            message = rpc.parse_message(body)
        except rpc.RpcError as exc:
            raise HttpError(exc.status, exc.body()) from None
        req = await self._request(message, headers, identity, target, scope.get("headers", ()))
        await self._dispatch(req, receive, send)

    # --- checks ---------------------------------------------------------------------------------

    def _check_host_and_origin(self, headers: dict[str, str]) -> None:
        host = headers.get("host", "")
        if not _host_allowed(host):
            raise _http_error(403, f"Host {host!r} is not allowed")
        origin = headers.get("origin")
        if origin is None:
            return
        if origin in settings.BEHAVRY_MCP_ALLOWED_ORIGINS:
            return
        parts = urlsplit(origin)
        if parts.netloc and parts.netloc == host:
            return  # same origin as the request
        raise _http_error(403, f"Origin {origin!r} is not allowed")

    async def _authenticate(self, headers: dict[str, str]):
        challenge = {"WWW-Authenticate": 'Bearer realm="behavry"'}
        scheme, _, raw = headers.get("authorization", "").partition(" ")
        raw = raw.strip()
        if scheme.lower() != "bearer" or not raw:
            raise _http_error(401, "Missing bearer token", headers=challenge)
        if raw.startswith(API_KEY_KIND):
            raise _http_error(401, "API keys are not valid on /mcp/; use an agent token", headers=challenge)
        hit, identity = cached_identity(raw)
        if not hit:
            identity = await on_db_thread(identity_for_token, raw)
        if identity is None:
            raise _http_error(
                401,
                "Invalid or revoked agent token",
                headers={**challenge, "WWW-Authenticate": 'Bearer realm="behavry", error="invalid_token"'},
            )
        if not identity.active:
            raise _http_error(403, f"Agent {identity.name!r} is suspended")
        return identity

    async def _still_allowed(self, headers: dict[str, str]) -> bool:
        """For a long-lived stream: is the agent that opened it still active and its token valid?
        (A cache hit under the usual bound; checked at each message and keepalive.)"""
        try:
            await self._authenticate(headers)
        except HttpError:
            return False
        return True

    async def _read_body(self, receive, headers: dict[str, str]) -> bytes:
        limit = settings.BEHAVRY_MCP_MAX_BODY_BYTES
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _http_error(413, f"Body larger than {limit} bytes")
        event = await receive()  # the usual case: the whole body in one event, no timer needed
        if event["type"] != "http.disconnect" and not event.get("more_body"):
            body = event.get("body", b"")
            if len(body) > limit:
                raise _http_error(413, f"Body larger than {limit} bytes")
            return body
        timeout = settings.BEHAVRY_MCP_BODY_TIMEOUT_SECONDS
        try:
            # A deadline for the whole body, so a sender of a byte every few seconds cannot hold
            # the connection (and its authenticated identity) for as long as it likes.
            async with asyncio.timeout(timeout):
                return await self._read_rest(receive, event, limit)
        except TimeoutError:
            raise _http_error(408, f"Request body not received within {timeout} s") from None

    @staticmethod
    async def _read_rest(receive, event, limit: int) -> bytes:
        chunks, size = [], 0
        while True:
            if event["type"] == "http.disconnect":
                raise HttpError(499)
            chunk = event.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _http_error(413, f"Body larger than {limit} bytes")
            chunks.append(chunk)
            if not event.get("more_body"):
                return b"".join(chunks)
            event = await receive()

    async def _request(
        self, message: dict, headers: dict[str, str], identity, target, raw_headers=()
    ) -> handlers.McpRequest:
        """Work out the agent's era and session, checking the era's header rules."""
        msg_id = message.get("id")
        _check_no_header_twice(msg_id, raw_headers)  # before the era is read from one of them
        header_version = headers.get("mcp-protocol-version")
        params: dict = message["params"] if isinstance(message.get("params"), dict) else {}
        meta: dict = params["_meta"] if isinstance(params.get("_meta"), dict) else {}
        meta_version = meta.get(rpc.META_VERSION) if "method" in message else None
        modern = (
            header_version in rpc.MODERN_VERSIONS
            or meta_version is not None
            or message.get("method") == "server/discover"
            or (
                header_version is not None
                and header_version not in rpc.LEGACY_VERSIONS
                and "mcp-session-id" not in headers
            )
        )
        if modern:
            if rpc.is_request(message):
                # The SDK server's ladder, in its order: the envelope (-32602), the headers against
                # the body (-32020), then the version (-32022), the one code a negotiating client
                # does not fall back from, so a client that disagrees with itself is told so first.
                missing = [key for key in (rpc.META_VERSION, rpc.META_CLIENT_CAPS) if key not in meta]
                if missing:
                    text = f"Invalid params: _meta is missing the required envelope key(s): {', '.join(missing)}"
                    raise HttpError(400, rpc.error_message(msg_id, rpc.INVALID_PARAMS, text))
                version = meta[rpc.META_VERSION]  # as it is: a falsy one is not the header's
                self._check_modern_headers(message, headers, version)
            else:
                version = meta_version if meta_version is not None else header_version
            if not isinstance(version, str):
                raise HttpError(
                    400, rpc.error_message(msg_id, rpc.INVALID_PARAMS, "The _meta protocolVersion must be a string")
                )
            if version not in rpc.MODERN_VERSIONS:
                raise HttpError(
                    400,
                    rpc.error_message(
                        msg_id,
                        rpc.UNSUPPORTED_VERSION,
                        f"Unsupported protocol version: {version}",
                        {"supported": list(rpc.MODERN_VERSIONS), "requested": version},
                    ),
                )
            if not rpc.is_request(message):
                self._check_modern_headers(message, headers, version)
            param_headers = {k: v for k, v in headers.items() if k.startswith(MCP_PARAM_PREFIX)}
            return handlers.McpRequest(identity, target, "modern", version, message, param_headers=param_headers)

        if header_version is not None and header_version not in rpc.LEGACY_VERSIONS:
            raise HttpError(
                400, rpc.error_message(msg_id, rpc.INVALID_REQUEST, f"Unsupported protocol version: {header_version}")
            )
        if message.get("method") == "initialize":
            return handlers.McpRequest(identity, target, "legacy", rpc.LATEST_LEGACY, message)
        session_id = headers.get("mcp-session-id")
        if not session_id:
            raise HttpError(
                400, rpc.error_message(msg_id, rpc.INVALID_REQUEST, "Bad Request: Mcp-Session-Id header is required")
            )
        session = await database_sync_to_async(
            AgentSession.objects.filter(
                pk=session_id, agent_id=identity.agent_id, server_id=target.id, ended_at__isnull=True
            ).first
        )()
        if session is None:
            raise HttpError(404, rpc.error_message(msg_id, rpc.SESSION_NOT_FOUND, "Session not found"))
        sessions.touch_if_due(session)
        return handlers.McpRequest(identity, target, "legacy", session.protocol_version, message, session)

    def _check_modern_headers(self, message: dict, headers: dict[str, str], version: str) -> None:
        msg_id = message.get("id")

        def mismatch(text: str) -> HttpError:
            return HttpError(400, rpc.error_message(msg_id, rpc.HEADER_MISMATCH, text))

        if "method" not in message:
            return  # responses carry no method headers
        if headers.get("mcp-protocol-version") != version:
            raise mismatch("MCP-Protocol-Version header does not match _meta protocolVersion")
        if headers.get("mcp-method") != message["method"]:  # verbatim: a method name is header-safe
            raise mismatch("Mcp-Method header does not match the request body's method")
        name_field = rpc.NAMED_METHODS.get(message["method"])
        named = message["params"].get(name_field) if name_field and isinstance(message.get("params"), dict) else None
        # A body without the name is refused by its handler (-32602), as by the SDK server.
        if named is not None:
            name_header = headers.get("mcp-name")
            if name_header is None or rpc.header_value(name_header) != named:
                raise mismatch(f"Mcp-Name header does not match the request body's '{name_field}'")

    # --- dispatch -------------------------------------------------------------------------------

    async def _dispatch(self, req: handlers.McpRequest, receive, send) -> None:
        message = req.message
        method = message.get("method")
        if not rpc.is_request(message):
            try:
                reply = await handlers.handle_client_message(req)
            except Exception:
                # Never a bare 500 (nor a traceback): the message was not relayed.
                logger.exception("MCP client message failed for %s", method or "response")
                reply = handlers.Reply(
                    status=503, body=rpc.error_message(None, rpc.INTERNAL_ERROR, "Behavry could not relay this message")
                )
            await _send_json(send, reply.status, reply.body, reply.headers)
            return
        if (
            method not in rpc.CLIENT_METHODS
            or (req.era == "modern" and method in ("initialize", "ping"))
            or (req.era == "legacy" and method == "server/discover")
        ):
            status = 404 if req.era == "modern" else 200
            await _send_json(
                send, status, rpc.error_message(message["id"], rpc.METHOD_NOT_FOUND, f"Method not found: {method}"), {}
            )
            return
        if method == "ping":
            await _send_json(send, 200, rpc.result_message(message["id"], {}), {})
            return
        handler = handlers.HANDLERS.get(method, handlers.handle_passthrough)

        # Race the handler against the agent going away or cancelling. In the 2026-07-28 era a
        # disconnect *is* the cancellation. In the 2025 era it is not (the spec says so), and a
        # `notifications/cancelled` is: the call then finishes upstream in the background so its
        # outcome is still audited, but nothing more is sent for it.
        # `halt` finishes when the request should stop. Only a session can be cancelled by
        # notification; a stateless call watches for the disconnect alone, with one task less.
        cancelled = asyncio.Event()
        session_id = req.session.pk if req.session is not None else None
        if session_id is not None:
            inflight.register(session_id, message["id"], cancelled)
            halt = asyncio.ensure_future(_watch(receive, cancelled))
        else:
            halt = asyncio.ensure_future(_wait_disconnect(receive))
        work = asyncio.ensure_future(handler(req))
        try:
            done, _ = await asyncio.wait({work, halt}, return_when=asyncio.FIRST_COMPLETED)
            if work not in done:
                self._abandon(req, work, cancelled.is_set())
                if cancelled.is_set():
                    # A 2025 agent's notifications/cancelled: no response for the request (the
                    # spec says so), yet its HTTP exchange must end, as an empty event stream.
                    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            try:
                reply = work.result()
            except rpc.RpcError as exc:
                body = exc.body()
                await _send_json(send, _answer_status(req, exc.status, body), body, {})
                return
            except Exception:
                # Never a bare 500: the agent gets a JSON-RPC error and nothing was forwarded that
                # policy did not allow (tools/call handles its own failures as denials).
                logger.exception("MCP handler failed for %s", method)
                body = rpc.error_message(message["id"], rpc.INTERNAL_ERROR, "Behavry could not process this request")
                await _send_json(send, 503, body, {})
                return
            if reply.stream is None:
                await _send_json(send, _answer_status(req, reply.status, reply.body), reply.body, reply.headers)
                if reply.after is not None:
                    await asyncio.shield(reply.after)  # the outcome's commit; nothing may cancel it
                return
            await self._stream(send, req, reply, halt, cancelled)
        finally:
            halt.cancel()
            if session_id is not None:
                inflight.unregister(session_id, message["id"])

    def _abandon(self, req: handlers.McpRequest, work: asyncio.Future, by_cancel: bool) -> None:
        if req.era == "modern" or by_cancel:
            work.cancel()  # closes the upstream stream; the handler audits the cancellation
            return
        _background(_drain(work))  # legacy disconnect: let the call finish and be audited

    async def _stream(self, send, req, reply: handlers.Reply, halt: asyncio.Future, cancelled: asyncio.Event) -> None:
        headers = SSE_HEADERS + [(k.lower().encode(), v.encode()) for k, v in reply.headers.items()]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        stream = reply.stream
        assert stream is not None, "only streamed replies come here"
        handed_off = False
        responded = False
        try:
            while True:
                step = asyncio.ensure_future(anext(stream))
                done, _ = await asyncio.wait(
                    {step, halt}, timeout=KEEPALIVE_SECONDS, return_when=asyncio.FIRST_COMPLETED
                )
                while not done:
                    # A slow tool that sends nothing: a comment now and then, so that no idle
                    # timeout (the agent's reader, a load balancer in front) closes the stream.
                    await send({"type": "http.response.body", "body": b": keepalive\n\n", "more_body": True})
                    done, _ = await asyncio.wait(
                        {step, halt}, timeout=KEEPALIVE_SECONDS, return_when=asyncio.FIRST_COMPLETED
                    )
                if step not in done:
                    if responded:  # the answer is out; a hang-up now cancels nothing
                        await _stop(step)
                        break
                    is_cancel = req.era == "modern" or cancelled.is_set()
                    if not is_cancel and reply.drain_on_disconnect:
                        _background(_drain_stream(step, stream))  # finish upstream, audit, discard
                        handed_off = True
                    else:
                        await _stop(step)
                        if is_cancel and reply.on_cancel is not None:
                            await asyncio.shield(reply.on_cancel())
                    break
                try:
                    message = step.result()
                except StopAsyncIteration:
                    break
                if message is handlers.KEEPALIVE:
                    await send({"type": "http.response.body", "body": b": keepalive\n\n", "more_body": True})
                    continue
                await send({"type": "http.response.body", "body": _sse_event(message), "more_body": True})
                if message.get("id") == req.message["id"] and ("result" in message or "error" in message):
                    responded = True
            # Ended even after a 2025 notifications/cancelled: no answer for the request, but a
            # complete HTTP response (after a hang-up the servers drop the send).
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if not handed_off:
                await stream.aclose()

    async def _get(self, send, receive, headers: dict[str, str], identity, target) -> None:
        """A 2025-era agent's stream for server-initiated messages, relayed from its upstream session.

        Only 2025-era upstreams have such a stream; for a 2026-07-28 upstream (and for stateless
        agents) the answer is 405, which the transport defines as "no GET stream here".
        """
        if "text/event-stream" not in headers.get("accept", ""):
            raise _http_error(406, "Not Acceptable: a GET stream needs Accept: text/event-stream")
        session_id = headers.get("mcp-session-id")
        if not session_id:
            raise _http_error(
                405, "This endpoint offers a GET stream only within a session", headers={"Allow": "POST, DELETE"}
            )
        session = await database_sync_to_async(
            AgentSession.objects.filter(
                pk=session_id, agent_id=identity.agent_id, server_id=target.id, ended_at__isnull=True
            ).first
        )()
        if session is None:
            raise _http_error(404, "Session not found", code=rpc.SESSION_NOT_FOUND)
        if not session.upstream_session_id:
            raise _http_error(405, "The upstream offers no GET stream", headers={"Allow": "POST, DELETE"})
        sessions.touch_if_due(session)
        key = (identity.agent_id, target.id)
        cap = settings.BEHAVRY_MCP_MAX_GET_STREAMS_PER_AGENT
        if _get_streams[key] >= cap:
            # One agent's sessions must not take every GET stream this process may hold to the
            # upstream (BEHAVRY_UPSTREAM_MAX_GET_STREAMS), leaving none for other agents.
            raise _http_error(429, f"Agent already has {cap} GET streams open to this upstream here")
        _get_streams[key] += 1
        sessions.stream_opened(session.pk)  # kept seen while it stays open, however quiet
        try:
            await self._relay_get(send, receive, headers, session, target)
        finally:
            sessions.stream_closed(session.pk)
            _get_streams[key] -= 1
            if not _get_streams[key]:
                del _get_streams[key]

    async def _relay_get(self, send, receive, headers: dict[str, str], session, target) -> None:
        try:
            upstream = await legacy_listen(target, session.upstream_session_id, session.upstream_protocol_version)
        except UpstreamError as exc:
            raise _http_error(502, str(exc), code=rpc.INTERNAL_ERROR) from exc
        if upstream is None:
            raise _http_error(405, "The upstream offers no GET stream", headers={"Allow": "POST, DELETE"})
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        gone = asyncio.ensure_future(_wait_disconnect(receive))
        messages = upstream.messages
        step: asyncio.Future | None = None
        try:
            while True:
                # One pending read survives keepalives: cancelling it would end the generator.
                step = step or asyncio.ensure_future(anext(messages))
                done, _ = await asyncio.wait(
                    {step, gone}, timeout=KEEPALIVE_SECONDS, return_when=asyncio.FIRST_COMPLETED
                )
                if gone in done:
                    await _stop(step)
                    return
                if not await self._still_allowed(headers):
                    await _stop(step)  # suspended or revoked since the stream opened: end it
                    break
                if step not in done:
                    # An idle stream still shows signs of life, so proxies and clients keep it open.
                    await send({"type": "http.response.body", "body": b": keepalive\n\n", "more_body": True})
                    continue
                try:
                    message = step.result()
                except (StopAsyncIteration, UpstreamError, *CLIENT_ERRORS):
                    break  # the upstream ended or dropped its stream: end the agent's too
                step = None
                await send({"type": "http.response.body", "body": _sse_event(message), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            gone.cancel()
            await upstream.aclose()

    async def _delete(self, send, headers: dict[str, str], identity, target) -> None:
        session_id = headers.get("mcp-session-id")
        if not session_id:
            raise _http_error(400, "Mcp-Session-Id header is required")
        session = await database_sync_to_async(
            AgentSession.objects.filter(
                pk=session_id, agent_id=identity.agent_id, server_id=target.id, ended_at__isnull=True
            ).first
        )()
        if session is None:
            raise _http_error(404, "Session not found", code=rpc.SESSION_NOT_FOUND)
        await database_sync_to_async(agent_session_end)(session_id=session.pk, reason="closed by client")
        if session.upstream_session_id:
            await legacy_terminate(target, session.upstream_session_id, session.upstream_protocol_version)
        await _send_json(send, 200, None, {})


async def _stop(step: asyncio.Future) -> None:
    """Cancel a pending `anext(stream)` and let the generator unwind (its finally blocks audit the
    cancellation) before the stream is closed: closing a generator that is still running in the
    step raises RuntimeError instead."""
    step.cancel()
    await asyncio.wait({step})


async def _watch(receive, cancelled: asyncio.Event) -> None:
    """Return when the agent disconnects or cancels this request."""
    disconnect = asyncio.ensure_future(_wait_disconnect(receive))
    cancel = asyncio.ensure_future(cancelled.wait())
    try:
        await asyncio.wait({disconnect, cancel}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        disconnect.cancel()
        cancel.cancel()


async def _wait_disconnect(receive) -> None:
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            return


_background_tasks: set[asyncio.Task] = set()

# Host header -> allowed, for the ALLOWED_HOSTS list the verdicts were reached under. Django's
# split (a regex) and pattern match measured 2-3 % of a proxied call's CPU in the profile, and
# agents send the same few Host values. Bounded: the header is the client's to choose.
_host_verdicts: dict[str, bool] = {}
_host_verdicts_under: list[str] | None = None
_HOST_VERDICTS_MAX = 256


def _host_allowed(host: str) -> bool:
    global _host_verdicts_under
    allowed_hosts = settings.ALLOWED_HOSTS
    if allowed_hosts is not _host_verdicts_under:  # new settings (tests override them): start over
        _host_verdicts.clear()
        _host_verdicts_under = allowed_hosts
    verdict = _host_verdicts.get(host)
    if verdict is None:
        domain, _port = split_domain_port(host)
        verdict = bool(domain) and validate_host(domain, allowed_hosts)
        if len(_host_verdicts) >= _HOST_VERDICTS_MAX:
            _host_verdicts.clear()
        _host_verdicts[host] = verdict
    return verdict


def _background(coro) -> None:
    task = asyncio.ensure_future(coro)
    _background_tasks.add(task)
    task.add_done_callback(_background_tasks.discard)


async def _drain(work: asyncio.Future) -> None:
    """Let an abandoned legacy call finish; a streamed reply is read to its end (and audited)."""
    try:
        reply = await work
    except Exception:
        logger.info("abandoned request ended with an error", exc_info=True)
        return
    if reply.stream is not None:
        if not reply.drain_on_disconnect:  # a held escalation stays pending for the agent's retry
            await reply.stream.aclose()
            return
        async for _ in reply.stream:
            pass


async def _drain_stream(step: asyncio.Future, stream) -> None:
    try:
        await step
        async for _ in stream:
            pass
    except StopAsyncIteration:
        pass
    except Exception:
        logger.info("abandoned stream ended with an error", exc_info=True)
    finally:
        await stream.aclose()
