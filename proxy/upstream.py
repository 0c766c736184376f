"""Talking to upstream MCP servers over Streamable HTTP, in whichever era each speaks.

One pool of keep-alive connections per upstream per event loop (a Daphne process has one loop):
proxy/http1.py's client, or aiohttp's behind an HTTP proxy. Requests share up to
REQUEST_CONNECTIONS of them; long-lived GET streams have connections of their own, at most
BEHAVRY_UPSTREAM_MAX_GET_STREAMS, so they never take a connection a tool call needs. The agent's
token is never forwarded: requests carry only the upstream's own credential header.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import functools
import json
import logging
import os
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from django.conf import settings
from yarl import URL

from proxy import http1
from proxy.generation import generation_watch
from proxy.jsonrpc import (
    LATEST_LEGACY,
    LATEST_MODERN,
    META_CLIENT_CAPS,
    META_CLIENT_INFO,
    META_VERSION,
    NAMED_METHODS,
    header_encode,
    header_value,
)

logger = logging.getLogger("behavry.proxy.upstream")

BEHAVRY_CLIENT_INFO = {"name": "behavry-proxy", "version": "0.1.0"}
UNSUPPORTED_VERSION = -32022
MODERN_ERROR_CODES = {-32020, -32021, UNSUPPORTED_VERSION}
# aiohttp's TimeoutErrors are also ClientErrors; they must be checked first to say "timed out".
CLIENT_ERRORS = (aiohttp.ClientError, http1.HttpError, TimeoutError)
# An error body (a refused session, a DELETE's answer) is read only to be glanced at.
ERROR_BODY_BYTES = 64 * 1024
# Connections one process opens to one upstream for requests (POST, DELETE, a resumed answer's GET).
REQUEST_CONNECTIONS = 200
# GET streams are counted per stream (BEHAVRY_UPSTREAM_MAX_GET_STREAMS), not by their client.
_UNCOUNTED = 1 << 30


class UpstreamError(Exception):
    """The upstream could not be reached or answered with something unusable."""


class UpstreamSessionGone(UpstreamError):
    """The upstream no longer knows our session (it answered 400/404 to a session request)."""


class UpstreamAnswerTooLarge(UpstreamError):
    """The upstream's answer (a JSON body, an SSE event or line) passed BEHAVRY_UPSTREAM_MAX_ANSWER_BYTES."""


class UpstreamNotJsonRpc(UpstreamError):
    """The upstream answered with a body that is no JSON-RPC message (an HTML error page, nothing).
    `status` is kept because era detection reads a 404 from a 503 differently."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class UpstreamIsModern(UpstreamError):
    """The upstream refused a 2025-era `initialize` as an unsupported version (-32022): it speaks
    2026-07-28 only, so the era remembered for it is wrong."""


@dataclass(frozen=True)
class UpstreamTarget:
    """What a request needs to know about an upstream, detached from the ORM."""

    id: int
    slug: str
    name: str
    url: str
    auth_header_name: str
    auth_header_value: str
    connect_timeout: float
    read_timeout: float
    era: str
    protocol_version: str

    def auth_headers(self) -> dict[str, str]:
        if self.auth_header_name and self.auth_header_value:
            return {self.auth_header_name: self.auth_header_value}
        return {}


@dataclass
class UpstreamReply:
    """An upstream HTTP response: its status and headers, and the JSON-RPC messages it carries."""

    status: int
    session_id: str | None
    streaming: bool
    messages: AsyncIterator[dict[str, Any]]
    _close: Any = field(default=None, repr=False)

    async def aclose(self) -> None:
        if self._close is not None:
            await self._close()


@dataclass
class _Pool:
    loop: asyncio.AbstractEventLoop
    url: URL
    # Direct connections take proxy/http1.py's client (a third of aiohttp's CPU per request). An
    # upstream behind an HTTP(S)_PROXY from the environment (read once: aiohttp's trust_env would
    # re-read it, and ~/.netrc, in a worker thread on every request) keeps aiohttp, which tunnels.
    client: http1.Client | None = None
    # Credentials in the URL (http://user:secret@host/mcp), as Basic auth, as aiohttp sent them.
    url_auth: dict[str, str] = field(default_factory=dict)
    session: aiohttp.ClientSession | None = None
    proxy: URL | None = None
    proxy_auth: aiohttp.BasicAuth | None = None
    # GET streams stay open for as long as an agent keeps its own: on the request connections a
    # few hundred of them left every other agent's calls queueing for minutes. They have a client
    # (or session) of their own, and a count held to BEHAVRY_UPSTREAM_MAX_GET_STREAMS.
    stream_client: http1.Client | None = None
    stream_session: aiohttp.ClientSession | None = None
    streams_open: int = 0

    @property
    def closed(self) -> bool:
        return self.client.closed if self.client is not None else self.session is None or self.session.closed


_pools: dict[tuple[int, int, str], _Pool] = {}


def _ssl_context() -> ssl.SSLContext:
    """The CA bundle httpx used (SSL_CERT_FILE, else certifi's), so the same upstreams verify."""
    cafile = os.environ.get("SSL_CERT_FILE")
    if not cafile:
        try:
            import certifi

            cafile = certifi.where()
        except ImportError:
            cafile = None
    return ssl.create_default_context(cafile=cafile)


def _discard(pool: _Pool) -> None:
    """Drop a pool whose loop is gone or ending, without awaiting anything (there may be no loop to
    await on); otherwise aiohttp reports an unclosed session and connector when it is collected."""
    for client in (pool.client, pool.stream_client):
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
    for session in (pool.session, pool.stream_session):
        if session is None:
            continue
        connector = session.connector
        session.detach()
        if connector is not None:
            with contextlib.suppress(Exception):
                connector._close()  # the synchronous part of close(): drop the pooled sockets


@atexit.register
def _discard_all() -> None:
    for pool in list(_pools.values()):
        _discard(pool)
    _pools.clear()


def pools_discard_for_loop() -> None:
    """Drop the running loop's pools, for a loop about to end (proxy/sessions.py runs one per beat
    job batch): a pool left in _pools would keep its sockets until its key came up again."""
    loop = asyncio.get_running_loop()
    for key, pool in list(_pools.items()):
        if pool.loop is loop:
            del _pools[key]
            _discard(pool)


def pool_for(target: UpstreamTarget) -> _Pool:
    loop = asyncio.get_running_loop()
    key = (id(loop), target.id, target.url)
    pool = _pools.get(key)
    if pool is None or pool.loop is not loop or pool.closed:
        if pool is not None:
            _discard(pool)
        url = URL(target.url)
        proxy, proxy_auth = None, None
        with contextlib.suppress(LookupError):
            proxy, proxy_auth = get_env_proxy_for_url(url)
        tls = _ssl_context() if url.scheme == "https" else None
        if proxy is None:
            origin = functools.partial(
                http1.Client, scheme=url.scheme, host=url.raw_host or "", port=url.port or 80, ssl=tls
            )
            pool = _Pool(
                loop,
                url,
                client=origin(limit=REQUEST_CONNECTIONS),
                stream_client=origin(limit=_UNCOUNTED),
                url_auth={"Authorization": _basic_auth(url.user, url.password or "")} if url.user else {},
            )
        else:
            pool = _Pool(
                loop,
                url,
                session=_proxied_session(tls, REQUEST_CONNECTIONS),
                stream_session=_proxied_session(tls, 0),  # 0: no limit of aiohttp's own
                proxy=proxy,
                proxy_auth=proxy_auth,
            )
        _pools[key] = pool
    return pool


def _proxied_session(tls: ssl.SSLContext | None, limit: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, limit_per_host=0, ssl=tls or True),
        cookie_jar=aiohttp.DummyCookieJar(),  # one pool serves every agent: share no cookies
        trust_env=False,
    )


def _basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


class _ProxiedResponse:
    """aiohttp's response, seen through the few members of http1.Response used here (status,
    headers with lower-case names, iter_any, at_eof, release, close)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers = {name.lower(): value for name, value in response.headers.items()}

    def at_eof(self) -> bool:
        return self._response.content.at_eof()

    def iter_any(self) -> AsyncIterator[bytes]:
        return self._response.content.iter_any()

    def release(self) -> None:
        self._response.release()

    def close(self) -> None:
        self._response.close()


Response = http1.Response | _ProxiedResponse


async def _request(
    target: UpstreamTarget,
    method: str,
    headers: dict[str, str],
    *,
    data: bytes | None = None,
    read: float | None,
    stream: bool = False,
) -> Response:
    """connect_timeout bounds the TCP/TLS connect; read_timeout bounds each wait for bytes.

    Like httpx.Timeout(read, connect=...): no deadline for the whole answer (a slow tool may
    stream for longer). Waiting for a free pooled connection is bounded like a connect (at least
    a second), not by the read timeout: when all REQUEST_CONNECTIONS are busy, a call fails as an
    upstream error in seconds rather than hang for minutes. `stream` takes a GET stream's own
    connections (the caller counts them).
    """
    pool = pool_for(target)
    pool_wait = max(1.0, target.connect_timeout)
    client = pool.stream_client if stream else pool.client
    if client is not None:
        return await client.request(
            method,
            pool.url.raw_path_qs,
            {**pool.url_auth, **headers} if pool.url_auth else headers,
            data,
            connect_timeout=target.connect_timeout,
            read_timeout=read,
            pool_timeout=pool_wait,
        )
    session = pool.stream_session if stream else pool.session
    assert session is not None, "a pool has a client or a session"
    # aiohttp's connect covers both the wait for a pooled connection and the connect itself.
    timeout = aiohttp.ClientTimeout(
        total=None, connect=pool_wait + target.connect_timeout, sock_connect=target.connect_timeout, sock_read=read
    )
    response = await session.request(
        method,
        pool.url,
        data=data,
        headers=headers,
        timeout=timeout,
        allow_redirects=False,
        proxy=pool.proxy,
        proxy_auth=pool.proxy_auth,
    )
    return _ProxiedResponse(response)


def _content_type(response: Response) -> str:
    return response.headers.get("content-type", "").split(";")[0].strip().lower()


def _close_response(response: Response) -> None:
    """Return a fully read connection to the pool; drop one mid-answer, so the upstream sees the
    disconnect (for a 2026-07-28 upstream that is the cancellation)."""
    if response.at_eof():
        response.release()
    else:
        response.close()


def _too_large(response: Response, limit: int) -> UpstreamAnswerTooLarge:
    """Drop the connection, whose unread rest can never be used (it must not go back to the pool),
    and say why the call failed."""
    response.close()
    return UpstreamAnswerTooLarge(f"upstream answer larger than {limit} bytes")


async def _read_whole(response: Response, limit: int) -> bytes:
    """The whole body, refused past `limit` bytes: by its Content-Length before reading any of it,
    else as soon as what has come passes it."""
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise _too_large(response, limit)
    parts: list[bytes] = []
    size = 0
    async for chunk in _chunks(response):
        size += len(chunk)
        if size > limit:
            raise _too_large(response, limit)
        parts.append(chunk)
    return b"".join(parts)


_LINE_END = re.compile(rb"\r\n|\r|\n")


async def _chunks(response: Response) -> AsyncIterator[bytes]:
    """The body's bytes; a connection lost, a malformed answer or a read timeout part-way is an
    UpstreamError, which every caller handles (and audits), like a failure before the answer."""
    chunks = response.iter_any()
    while True:
        try:
            chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except CLIENT_ERRORS as exc:
            raise UpstreamError(f"the upstream broke off its answer: {type(exc).__name__}") from exc
        yield chunk


async def _lines(response: Response, limit: int) -> AsyncIterator[str]:
    """Lines of a body as SSE defines them (CRLF, CR or LF), each at most `limit` bytes."""
    parts: list[bytes] = []
    pending = 0  # bytes of the line not yet ended
    after_cr = False
    async for chunk in _chunks(response):
        if after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        start = 0
        for match in _LINE_END.finditer(chunk):
            if pending + match.start() - start > limit:
                raise _too_large(response, limit)
            parts.append(chunk[start : match.start()])
            yield b"".join(parts).decode("utf-8", "replace")
            parts = []
            pending = 0
            start = match.end()
        if start < len(chunk):
            pending += len(chunk) - start
            if pending > limit:
                raise _too_large(response, limit)
            parts.append(chunk[start:])
        after_cr = chunk.endswith(b"\r")
    if parts:
        yield b"".join(parts).decode("utf-8", "replace")


def _message(payload: str) -> dict[str, Any] | None:
    """The JSON-RPC message in one SSE event's data, or None (an empty priming event, non-JSON)."""
    if not payload.strip():
        return None
    try:
        message = json.loads(payload)
    except ValueError:
        logger.warning("upstream sent a non-JSON SSE event; ignored")
        return None
    return message if isinstance(message, dict) else None


# 2025-11-25 polling SSE (SEP-1699): reconnections in a row that bring no event before the answer
# is given up (the SDK client allows 2), and the wait when the upstream sent no `retry` (the SDK
# client's). A shorter `retry` is taken as RESUME_MIN_DELAY, so an upstream that closes at once
# cannot spin the loop.
RESUME_ATTEMPTS = 3
RESUME_DELAY = 1.0
RESUME_MIN_DELAY = 0.1


class _SseStream:
    """An upstream's SSE answer, message by message, resumed where the 2025-11-25 transport lets
    the upstream end the connection mid-stream.

    Such an upstream may close the connection after an event with an id, having sent `retry`,
    and expects a GET with that Last-Event-ID after `retry` ms for the rest of the stream
    (SEP-1699 polling; the official SDK server does it with an event store). The messages then
    go on from the resumed stream as if nothing happened. A request's answer is resumed until its
    response has come, a GET stream whenever it ends; a reconnection that fails or brings no
    event counts against RESUME_ATTEMPTS, and those in a row stay within the read timeout of
    the end they follow. A 2026-07-28 upstream has no resumption (resume_headers None): its end is
    the end, as is the end of a stream that never sent an id.
    """

    def __init__(
        self,
        target: UpstreamTarget,
        response: Response,
        *,
        request_id: Any = None,
        resume_headers: dict[str, str] | None = None,
        stream: bool = False,
        on_close: Any = None,
    ) -> None:
        self.target = target
        self.response = response
        self.request_id = request_id  # None on a GET stream: no response ends it
        self.resume_headers = resume_headers
        self.stream = stream  # a GET stream: resumed on the GET streams' connections, no read timeout
        self.on_close = on_close
        self.last_event_id = ""
        self.retry: float | None = None  # seconds
        self.answered = False
        self.closed = False
        self.misses = 0  # reconnections in a row that failed or brought no event

    async def close(self) -> None:
        self.closed = True
        _close_response(self.response)
        if self.on_close is not None:
            on_close, self.on_close = self.on_close, None
            on_close()

    async def messages(self) -> AsyncIterator[dict[str, Any]]:
        limit = settings.BEHAVRY_UPSTREAM_MAX_ANSWER_BYTES
        loop = asyncio.get_running_loop()
        ended_at = 0.0  # when the stream first ended since its last event
        while True:
            broke: UpstreamError | None = None
            try:
                async for payload in self._events(limit):
                    ended_at = 0.0
                    self.misses = 0
                    message = _message(payload)
                    if message is None:
                        continue
                    if self._answers(message):
                        self.answered = True
                    yield message
            except UpstreamAnswerTooLarge:
                raise
            except UpstreamError as exc:
                broke = exc  # a connection lost after an event with an id is resumed too
            if self.answered or self.closed or self.resume_headers is None or not self.last_event_id:
                if broke is not None:
                    raise broke
                return
            _close_response(self.response)
            ended_at = ended_at or loop.time()
            response = await self._resume(ended_at, broke)
            if response is None:
                return
            if self.closed:  # the reader let go while the GET was on its way
                _close_response(response)
                return
            self.response = response

    def _answers(self, message: dict[str, Any]) -> bool:
        return (
            self.request_id is not None
            and message.get("id") == self.request_id
            and "method" not in message
            and ("result" in message or "error" in message)
        )

    async def _resume(self, ended_at: float, broke: UpstreamError | None) -> Response | None:
        """GET the rest of the stream from the last event id, after `retry`; a few tries, all
        within the read timeout from when the stream ended. None: the reader let go meanwhile."""
        assert self.resume_headers is not None
        loop = asyncio.get_running_loop()
        headers = {"Accept": "text/event-stream", **self.resume_headers, "Last-Event-ID": self.last_event_id}
        why = f"its connection ended ({broke})" if broke else "it ended the connection"
        while True:
            self.misses += 1
            if self.misses > RESUME_ATTEMPTS:
                raise UpstreamError(
                    f"upstream {self.target.slug} could not be resumed after event {self.last_event_id[:40]!r}:"
                    f" {why}, and {RESUME_ATTEMPTS} reconnections brought nothing"
                )
            delay = max(RESUME_MIN_DELAY, RESUME_DELAY if self.retry is None else self.retry)
            if loop.time() + delay - ended_at > self.target.read_timeout:
                raise UpstreamError(
                    f"upstream {self.target.slug} timed out resuming after event {self.last_event_id[:40]!r}:"
                    f" no event within {self.target.read_timeout} s ({why})"
                )
            await asyncio.sleep(delay)
            if self.closed:
                return None
            read = None if self.stream else self.target.read_timeout
            try:
                response = await _request(self.target, "GET", headers, read=read, stream=self.stream)
            except CLIENT_ERRORS as exc:
                why = f"reconnecting failed: {type(exc).__name__}"
                continue
            if response.status == 200 and _content_type(response) == "text/event-stream":
                return response
            _close_response(response)
            why = f"reconnecting was answered HTTP {response.status}"
            if 400 <= response.status < 500:  # refused (gone, not allowed): asking again will not help
                raise UpstreamError(f"upstream {self.target.slug} could not be resumed: {why}")

    async def _events(self, limit: int) -> AsyncIterator[str]:
        """Each event's data as the SSE parser dispatches it (empty for a priming event), noting
        ids and retry hints. An event's data lines together are held to the answer limit."""
        response = self.response
        data: list[str] = []
        size = 0
        event_id: str | None = None
        async for line in _lines(response, limit):
            if line == "":
                if not data and event_id is None:
                    continue  # nothing to dispatch
                if event_id is not None:
                    self.last_event_id = event_id  # set as the event is dispatched, as EventSource does
                    event_id = None
                payload = "\n".join(data)
                data = []
                size = 0
                yield payload
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
                size += len(value) + 1
                if size > limit:
                    raise _too_large(response, limit)
            elif name == "id" and "\0" not in value:
                event_id = value
            elif name == "retry" and value.isascii() and value.isdigit():
                self.retry = int(value) / 1000
        if data:
            yield "\n".join(data)  # an event the upstream did not end before closing: taken as is


async def post(
    target: UpstreamTarget,
    message: dict[str, Any],
    *,
    session_id: str | None = None,
    protocol_version: str | None = None,
    headers: dict[str, str] | None = None,
    agent_param_headers: dict[str, str] | None = None,
) -> UpstreamReply:
    """POST one message upstream. The caller must `aclose()` the reply (it may hold a stream open).
    `agent_param_headers`: a 2026-07-28 agent's `Mcp-Param-*` headers; see _passable_param_headers."""
    request_headers = {
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        **target.auth_headers(),
        **(headers or {}),
    }
    if session_id:
        request_headers["Mcp-Session-Id"] = session_id
    if protocol_version:
        request_headers["MCP-Protocol-Version"] = protocol_version
    if request_headers.get("Mcp-Method") == "tools/call" and (
        request_headers.get("MCP-Protocol-Version") == LATEST_MODERN
    ):
        request_headers.update(await mcp_param_headers(target, message))
    if agent_param_headers and request_headers.get("Mcp-Method") == "tools/call":
        request_headers.update(_passable_param_headers(message, agent_param_headers, request_headers))
    body = json.dumps(message).encode()
    try:
        response = await _request(target, "POST", request_headers, data=body, read=target.read_timeout)
    except TimeoutError as exc:
        raise UpstreamError(f"upstream {target.slug} timed out: {type(exc).__name__}") from exc
    except CLIENT_ERRORS as exc:
        raise UpstreamError(f"upstream {target.slug} unreachable: {type(exc).__name__}") from exc

    content_type = _content_type(response)
    status = response.status
    session_header = response.headers.get("mcp-session-id")
    if session_id and status in (400, 404) and content_type != "text/event-stream":
        try:
            error_body = await _read_whole(response, ERROR_BODY_BYTES)
        except UpstreamError:
            error_body = b""
        finally:
            _close_response(response)
        if status == 404 or b"session" in error_body.lower():
            raise UpstreamSessionGone(f"upstream {target.slug} dropped session {session_id[:8]}…")
        raise UpstreamError(f"upstream {target.slug} answered HTTP {status}: {error_body[:200]!r}")

    if status == 202:
        _close_response(response)
        return UpstreamReply(status, session_header, False, _empty(), None)
    if content_type == "text/event-stream" and status == 200:
        stream = _SseStream(
            target,
            response,
            request_id=message.get("id") if "method" in message else None,
            resume_headers=_resume_headers(target, request_headers, session_id or session_header),
        )
        return UpstreamReply(status, session_header, True, stream.messages(), stream.close)
    try:
        answer = await _read_whole(response, settings.BEHAVRY_UPSTREAM_MAX_ANSWER_BYTES)
    finally:
        _close_response(response)
    try:
        parsed = json.loads(answer) if answer else None
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise UpstreamNotJsonRpc(f"upstream {target.slug} answered HTTP {status} without a JSON-RPC message", status)
    return UpstreamReply(status, session_header, False, _one(parsed), None)


def _resume_headers(target: UpstreamTarget, sent: dict[str, str], session_id: str | None) -> dict[str, str] | None:
    """What a GET resuming a request's answer carries (its session and version, the upstream's
    credential), or None for a 2026-07-28 request, which cannot be resumed."""
    version = next((value for name, value in sent.items() if name.lower() == "mcp-protocol-version"), None)
    if version == LATEST_MODERN:
        return None
    headers = target.auth_headers()
    if session_id:
        headers["Mcp-Session-Id"] = session_id
    if version:
        headers["MCP-Protocol-Version"] = version
    return headers


async def _empty() -> AsyncIterator[dict[str, Any]]:
    return
    yield  # pragma: no cover - makes this an async generator


async def _one(message: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    yield message


async def first_response(
    reply: UpstreamReply,
    request_id: Any,
    answer_request: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Read the reply until the response to `request_id`, dropping anything before it; with
    `answer_request`, the upstream's own requests before it are handed to that instead."""
    try:
        async for message in reply.messages:
            if message.get("id") == request_id and ("result" in message or "error" in message):
                return message
            if answer_request is not None and isinstance(message.get("method"), str) and "id" in message:
                await answer_request(message)
    finally:
        await reply.aclose()
    raise UpstreamError("upstream ended its answer without a response")


# --- era-specific envelopes ----------------------------------------------------------------------


def modern_request(message: dict[str, Any], *, client_info: dict, client_capabilities: dict) -> tuple[dict, dict]:
    """Wrap a message for a 2026-07-28 upstream: `_meta` protocol fields plus the required headers."""
    params = dict(message.get("params") or {})
    meta = dict(params.get("_meta") or {})
    meta[META_VERSION] = LATEST_MODERN
    meta.setdefault(META_CLIENT_INFO, client_info or BEHAVRY_CLIENT_INFO)
    meta.setdefault(META_CLIENT_CAPS, client_capabilities or {})
    params["_meta"] = meta
    wrapped = {**message, "params": params}
    headers = {"MCP-Protocol-Version": LATEST_MODERN, "Mcp-Method": message["method"]}
    name_field = NAMED_METHODS.get(message["method"])
    if name_field and isinstance(params.get(name_field), str):
        headers["Mcp-Name"] = header_encode(params[name_field])
    return wrapped, headers


# --- Mcp-Param-* headers (2026-07-28) -------------------------------------------------------------
#
# A tool's inputSchema may mark arguments with `x-mcp-header`; a 2026-07-28 tools/call then carries
# each such argument also as an `Mcp-Param-<token>` header, and the upstream refuses the call
# (-32020) when header and body disagree or the header is missing. Behavry derives these headers
# from the body it decided on, for agents of both eras (a 2025 agent sends none), and checks a
# 2026 agent's own against its body (mcp_param_mismatch). Of the agent's own it passes on only
# those it has no schema for (_passable_param_headers). The schemas come from the tool catalog
# (tools/list, proxy.models.Tool), per upstream, cached like the classification rows
# (proxy/classify.py): served while the cache generation stands (a changed input_schema moves it),
# so a call costs a dictionary lookup, and nothing more for the usual tool without such arguments.
PARAM_MAP_SECONDS = 60.0
MCP_PARAM_PREFIX = "mcp-param-"  # lower case, as ASGI gives header names


@functools.cache
def _param_maps():
    from proxy.identity import TTLCache  # proxy.identity imports this module

    return TTLCache("mcp-param", lambda: PARAM_MAP_SECONDS, max_entries=10_000)


def _read_param_maps(server_id: int) -> dict[str, tuple[dict[tuple[str, ...], str], dict]]:
    """{tool name: ({argument path: header token}, input schema)} of the upstream's catalogued
    tools that have `x-mcp-header` arguments, stored in the cache. On a database thread."""
    from proxy.models import Tool

    cache = _param_maps()
    started = cache.read_started()
    maps: dict[str, tuple[dict[tuple[str, ...], str], dict]] = {}
    # Only schemas that mention the keyword at all: usually none, and the SDK (imported once, about
    # a second) is needed only when one does.
    rows = Tool.objects.filter(server_id=server_id, input_schema__icontains="x-mcp-header")
    for name, schema in rows.values_list("name", "input_schema"):
        from mcp.shared.inbound import find_invalid_x_mcp_header, x_mcp_header_map

        # An invalid annotation makes the SDK server check no header of the tool (and its client
        # drop the tool): nothing to send.
        if find_invalid_x_mcp_header(schema) is None and (header_map := x_mcp_header_map(schema)):
            maps[name] = (header_map, schema)
    cache.put(server_id, maps, started)
    return maps


async def _tool_param_map(target: UpstreamTarget, name: str) -> tuple[dict[tuple[str, ...], str], dict] | None:
    """The tool's ({argument path: header token}, input schema), or None when it has no
    `x-mcp-header` argument: a dictionary lookup while the cache generation stands. Raises if the
    catalog cannot be read."""
    hit, maps = _param_maps().get(target.id, generation_watch.peek(), _read_param_maps, target.id)
    if not hit:
        from behavry.dbthreads import on_db_thread

        maps = await on_db_thread(_read_param_maps, target.id)
    return maps.get(name)


def _passable_param_headers(
    message: dict[str, Any], agent_headers: dict[str, str], request_headers: dict[str, str]
) -> dict[str, str]:
    """The agent's `Mcp-Param-*` headers of a tools/call that Behavry derives none of (its catalog
    has no schema for them: a tool nobody listed yet, or one the upstream changed). The transport
    obliges an intermediary to forward those, and the upstream checks them against the body. Only
    a header whose value is one of the call's argument values goes, as `x-mcp-header` defines them:
    then it carries nothing the decision, the audit trail and any scan of the arguments did not see."""
    params = message.get("params")
    arguments = params.get("arguments") if isinstance(params, dict) else None
    if not isinstance(arguments, dict):
        return {}
    values: set[str] = set()
    pending: list[Any] = [arguments]
    while pending:  # the argument values a header can mirror: scalars, at any depth of objects
        node = pending.pop()
        for value in node.values():
            if isinstance(value, dict):
                pending.append(value)
            elif isinstance(value, bool):
                values.add("true" if value else "false")
            elif isinstance(value, str | int | float):
                try:
                    values.add(str(value))
                except ValueError:  # an int longer than Python will print
                    continue
    derived = {name.lower() for name in request_headers}
    return {
        name: value for name, value in agent_headers.items() if name not in derived and header_value(value) in values
    }


async def mcp_param_mismatch(
    target: UpstreamTarget, name: str, arguments: dict[str, Any], param_headers: dict[str, str]
) -> str | None:
    """Why a 2026-07-28 agent's `Mcp-Param-*` headers disagree with its tools/call of `name`
    (its `arguments` already checked to be an object), or None. Checked as the SDK server checks
    them (present together and equal, or absent together), for tools whose catalogued schema
    marks arguments; a tool the catalog does not know is checked by its upstream, which gets the
    headers as they came."""
    if not arguments and not param_headers:
        return None  # nothing to compare
    try:
        known = await _tool_param_map(target, name)
    except Exception:
        # Not a policy input: the decision reads the body. Unchecked here, the headers still meet
        # the upstream's own check.
        logger.exception("could not read the x-mcp-header schemas of upstream %s", target.slug)
        return None
    if known is None:
        return None
    from mcp.shared.inbound import validate_mcp_param_headers

    try:
        rejection = validate_mcp_param_headers(known[1], arguments, param_headers)
    except ValueError:
        # The SDK's decoding lets a non-ASCII `=?base64?…?=` payload raise: it matches nothing.
        return "an Mcp-Param header carries a malformed base64 value"
    return rejection.message if rejection is not None else None


async def mcp_param_headers(target: UpstreamTarget, message: dict[str, Any]) -> dict[str, str]:
    """The `Mcp-Param-*` headers of a 2026-07-28 tools/call, from its arguments and the tool's schema."""
    params = message.get("params")
    name = params.get("name") if isinstance(params, dict) else None
    arguments = params.get("arguments") if isinstance(params, dict) else None
    if not isinstance(name, str) or not isinstance(arguments, dict) or not arguments:
        return {}  # no argument, no header
    try:
        known = await _tool_param_map(target, name)
    except Exception:
        # The call is decided and audited already; the headers only repeat the body. Without
        # them an upstream that needs them refuses the call (-32020), which the agent is told.
        logger.exception("could not read the x-mcp-header schemas of upstream %s", target.slug)
        return {}
    if known is None:
        return {}
    header_map = known[0]
    from mcp.shared.inbound import mcp_param_headers as render

    headers: dict[str, str] = {}
    for path, token in header_map.items():
        try:
            headers.update(render({path: token}, arguments))
        except UnicodeEncodeError:
            # A lone surrogate (JSON allows "\ud800") has no UTF-8 and so no header: left out, the
            # upstream refuses the call with -32020 instead of the forward path raising.
            continue
    return headers


def legacy_request(message: dict[str, Any]) -> dict[str, Any]:
    """Strip the 2026-07-28 `_meta` protocol fields before sending to a 2025-era upstream."""
    params = message.get("params")
    if not isinstance(params, dict) or not isinstance(params.get("_meta"), dict):
        return message
    meta = {k: v for k, v in params["_meta"].items() if not k.startswith("io.modelcontextprotocol/")}
    params = {**params, "_meta": meta} if meta else {k: v for k, v in params.items() if k != "_meta"}
    return {**message, "params": params}


# Era detection concludes only from an answer about the request itself. A status outside these
# (401/403, 408/429, 5xx, a redirect) comes from whatever sits in front of the upstream or from a
# passing state of it: it says nothing about the protocol, and remembering a guess from it pinned
# a 2026-only upstream to "legacy" for good after one 503 during a deploy.
ANSWER_STATUSES = frozenset({200, 400, 404, 405})
# Of those, the statuses a 2025-era server refuses an unknown request with: with a JSON-RPC error
# that is not one of the 2026 codes, they are its answer to server/discover.
REFUSAL_STATUSES = frozenset({400, 404, 405})


def _error_code(message: dict[str, Any] | None) -> int | None:
    """The JSON-RPC error code in an answer, or None. Read defensively: the body is the upstream's
    (or a proxy's in front of it: OAuth's 401 says {"error": "invalid_token"})."""
    error = (message or {}).get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, int) and not isinstance(code, bool) else None


async def _probe(
    target: UpstreamTarget, message: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, str | None, dict[str, Any] | None]:
    """POST one detection probe: (HTTP status, session id, the response to it or None when the
    body is no JSON-RPC message). Transport failures are UpstreamError: no verdict."""
    try:
        reply = await post(target, message, headers=headers)
    except UpstreamNotJsonRpc as exc:
        return exc.status, None, None
    answer: dict[str, Any] | None = None
    try:
        async for candidate in reply.messages:
            if candidate.get("id") == message["id"] and ("result" in candidate or "error" in candidate):
                answer = candidate
                break
            if candidate.get("id") is None and "error" in candidate:  # about the request, unread (id null)
                answer = candidate
                break
    finally:
        await reply.aclose()
    return reply.status, reply.session_id, answer


def _no_verdict(target: UpstreamTarget, what: str, status: int) -> UpstreamError:
    return UpstreamError(
        f"upstream {target.slug} answered {what} with HTTP {status}; its protocol era is not known yet"
        " (asked again on the next request)"
    )


async def detect_era(target: UpstreamTarget) -> tuple[str, dict[str, Any]]:
    """Probe with server/discover: a 2026-07-28 server answers it, an older one refuses it.

    Returns ("modern", discover result), ("modern", {}) or ("legacy", {}): a verdict the caller
    may remember. Raises UpstreamError when the upstream gave no clear answer (unreachable,
    401/403, 5xx, an HTML page...), so that nothing is remembered and the next request asks again.
    An answer that is neither clearly modern nor a clear 2025-era refusal is settled by asking
    `initialize`, which only a 2025-era server accepts.
    """
    probe = {"jsonrpc": "2.0", "id": "behavry-discover", "method": "server/discover", "params": {}}
    wrapped, headers = modern_request(probe, client_info=BEHAVRY_CLIENT_INFO, client_capabilities={})
    status, _session, message = await _probe(target, wrapped, headers)
    if status not in ANSWER_STATUSES:
        raise _no_verdict(target, "server/discover", status)
    result = (message or {}).get("result")
    if status == 200 and isinstance(result, dict):
        versions = result.get("supportedVersions")
        if isinstance(versions, list) and LATEST_MODERN in versions:
            return "modern", result
    code = _error_code(message)
    if code in MODERN_ERROR_CODES:
        return "modern", {}
    if status in REFUSAL_STATUSES and code is not None:
        return "legacy", {}  # e.g. the SDK's 400 -32000 "Bad Request: No valid session ID provided"
    return await _initialize_probe(target)


async def _initialize_probe(target: UpstreamTarget) -> tuple[str, dict[str, Any]]:
    """Settle an unclear server/discover answer: a 2025-era server accepts `initialize` (its
    session is then closed again), a 2026-only one refuses it with -32022."""
    status, session_id, answer = await _probe(target, _initialize_message(LATEST_LEGACY, {}, {}))
    result = (answer or {}).get("result")
    if status == 200 and isinstance(result, dict) and isinstance(result.get("protocolVersion"), str):
        if session_id:
            await legacy_terminate(target, session_id, result["protocolVersion"])
        return "legacy", {}
    if status in ANSWER_STATUSES and _error_code(answer) == UNSUPPORTED_VERSION:
        return "modern", {}
    raise _no_verdict(target, "server/discover and initialize", status)


def _initialize_message(protocol_version: str, client_info: dict, client_capabilities: dict) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": "behavry-initialize",
        "method": "initialize",
        "params": {
            "protocolVersion": protocol_version,
            "capabilities": client_capabilities or {},
            "clientInfo": client_info or BEHAVRY_CLIENT_INFO,
        },
    }


async def legacy_initialize(
    target: UpstreamTarget, *, client_info: dict, client_capabilities: dict, protocol_version: str = LATEST_LEGACY
) -> tuple[str, str, dict[str, Any]]:
    """Open a 2025-era session upstream: initialize, then notifications/initialized.

    Returns (upstream session id, negotiated version, initialize result).
    """
    reply = await post(target, _initialize_message(protocol_version, client_info, client_capabilities))
    session_id = reply.session_id or ""
    response = await first_response(reply, "behavry-initialize")
    result = response.get("result")
    if not isinstance(result, dict):
        refusal = UpstreamIsModern if _error_code(response) == UNSUPPORTED_VERSION else UpstreamError
        raise refusal(f"upstream {target.slug} refused initialize: {response.get('error')}")
    version = result.get("protocolVersion") or protocol_version
    done = await post(
        target,
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        session_id=session_id or None,
        protocol_version=version,
    )
    await done.aclose()
    return session_id, version, result


async def legacy_listen(target: UpstreamTarget, session_id: str, protocol_version: str) -> UpstreamReply | None:
    """Open the upstream's GET stream for server-initiated messages, or None if it offers none.

    It counts against BEHAVRY_UPSTREAM_MAX_GET_STREAMS until the reply is closed; one past that
    budget is an UpstreamError at once, and the caller refuses the agent's GET.
    """
    pool = pool_for(target)
    budget = settings.BEHAVRY_UPSTREAM_MAX_GET_STREAMS
    if pool.streams_open >= budget:
        raise UpstreamError(
            f"upstream {target.slug} already has {budget} GET streams open from this process;"
            " try again when one has closed"
        )
    pool.streams_open += 1
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            pool.streams_open -= 1

    headers = {
        "Accept": "text/event-stream",
        "Mcp-Session-Id": session_id,
        "MCP-Protocol-Version": protocol_version,
        **target.auth_headers(),
    }
    try:
        response = await _request(target, "GET", headers, read=None, stream=True)
    except CLIENT_ERRORS as exc:
        release()
        raise UpstreamError(f"upstream {target.slug} GET stream failed: {type(exc).__name__}") from exc
    except BaseException:
        release()
        raise
    if response.status != 200 or _content_type(response) != "text/event-stream":
        _close_response(response)
        release()
        return None
    resume = {key: value for key, value in headers.items() if key != "Accept"}
    stream = _SseStream(target, response, resume_headers=resume, stream=True, on_close=release)
    return UpstreamReply(200, session_id, True, stream.messages(), stream.close)


async def legacy_terminate(target: UpstreamTarget, session_id: str, protocol_version: str) -> None:
    """Best-effort DELETE of an upstream session."""
    headers = {"Mcp-Session-Id": session_id, "MCP-Protocol-Version": protocol_version, **target.auth_headers()}
    try:
        response = await _request(target, "DELETE", headers, read=target.read_timeout)
        try:
            await _read_whole(response, ERROR_BODY_BYTES)
        finally:
            _close_response(response)
    except (UpstreamError, *CLIENT_ERRORS):
        logger.info("DELETE of upstream session on %s failed; it will expire there", target.slug)
