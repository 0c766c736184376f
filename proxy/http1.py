"""A small HTTP/1.1 client for the hop to upstream MCP servers: keep-alive connections to one
origin, requests one at a time per connection, responses parsed by httptools (llhttp, in C).

Why not aiohttp's client, which this replaced for direct connections: the upstream hop runs on
every proxied call, and aiohttp's request machinery (ClientRequest, ClientResponse, multidict,
yarl, its timer contexts) measured 0.34-0.41 ms of CPU per POST on this host, this client
0.10-0.12 ms for the same POST (bench/README, 2026-12-03). MCP needs little of HTTP: POST, GET and
DELETE with a few headers, and answers that are one JSON body or a server-sent event stream.
What this client leaves out: redirects (never followed here), cookies (never shared between
agents), HTTP proxies (upstream.py keeps aiohttp for an upstream behind HTTP(S)_PROXY),
pipelining, HTTP/2, request bodies other than bytes, and protocol switches (101 is an error;
other 1xx answers are skipped). There is no reaper for idle connections: one past IDLE_SECONDS
is closed when the pool next reaches it, and the server will have closed its end by then.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import httptools

# An idle connection older than this is closed, not reused: uvicorn closes idle keep-alive
# connections after 5 s by default, and a request written onto a socket the server is closing at
# that moment fails. A server with a shorter keep-alive can still meet that race: a GET or DELETE
# is then retried on a new connection, a POST fails as an upstream error (and is audited so).
IDLE_SECONDS = 4.0
# Above this many unread bytes of one answer, the connection stops reading until the reader
# catches up, so an upstream cannot fill memory faster than the agent takes it.
READ_HIGH_WATER = 256 * 1024
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


class HttpError(Exception):
    """The exchange failed: a connection lost or refused, a malformed answer, a bad header."""


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and the answer it is reading."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.lost = False
        self.stray = False  # the server sent more than the answer: ignored, the connection closed
        self.idle_since = 0.0
        self.reused = False
        # The answer being read.
        self.got_bytes = False
        self.status = 0
        self.interim = False  # inside a 1xx answer, which precedes the real one
        self.header_list: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.close_delimited = False
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.paused = False
        self.error: Exception | None = None
        self.waiter: asyncio.Future | None = None

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._spoil(HttpError("the upstream switched protocols (101), which MCP does not use"))
        except httptools.HttpParserError as exc:
            self._spoil(HttpError(f"malformed HTTP answer: {exc}"))

    def eof_received(self) -> bool | None:
        # Marked at once, not when connection_lost runs a loop step later: in between, the
        # connection must not be handed to another request (its write would go nowhere).
        self.lost = True
        return False  # close our side too: nothing more can be read here

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.headers_done and self.close_delimited and not self.complete and exc is None:
            self.on_message_complete()  # an answer without a length ends when the connection does
            return
        if not self.complete:
            self._fail(HttpError("the upstream closed the connection" + (f": {exc}" if exc else "")))

    # --- httptools callbacks ---

    def on_message_begin(self) -> None:
        if self.complete:
            # Bytes after the answer, unasked (nothing is pipelined here): the server is out of
            # step with this connection, so it must not carry another request, and what follows
            # is not part of the answer.
            self.stray = True
            self._spoil(None)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.stray:
            self.header_list.append((name, value))

    def on_headers_complete(self) -> None:
        if self.stray:
            return
        status = self.parser.get_status_code()
        if status < 200:  # 100 Continue, 103 Early Hints: interim, the answer follows
            self.interim = True
            self.header_list = []
            return
        self.status = status
        self.headers_done = True
        fields = {name.lower(): value for name, value in self.header_list}
        coding = fields.get(b"transfer-encoding", b"").rsplit(b",", 1)[-1].strip().lower()
        # RFC 9112 6.3: without chunked as the last coding or a length, the body ends at close.
        self.close_delimited = (
            coding != b"chunked" and (b"content-length" not in fields or b"transfer-encoding" in fields)
        ) and status not in (204, 304)
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.stray:
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > READ_HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.stray:
            return
        if self.interim:
            self.interim = False
            return
        self.complete = True
        # Asked now: once the message is complete, llhttp resets the flags this reads.
        self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    # --- the client's side ---

    def _spoil(self, error: Exception | None) -> None:
        """The connection cannot be trusted any more: fail what is pending, close it."""
        if error is not None:
            self._fail(error)
        self.close()

    def _fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def start(self) -> None:
        """Get ready for the next answer on this connection."""
        self.got_bytes = self.headers_done = self.complete = self.keep_alive = self.close_delimited = False
        self.interim = False
        self.status = 0
        self.header_list = []
        self.chunks.clear()
        self.buffered = 0
        self.error = None

    async def wait(self, timeout: float | None) -> None:
        """Until the parser has news (headers, body, the end) or the connection fails."""
        waiter = self.waiter = self.loop.create_future()
        timer = None if timeout is None else self.loop.call_later(timeout, _time_out, waiter)
        try:
            await waiter
        finally:
            if self.waiter is waiter:  # else the connection has moved on to another request's wait
                self.waiter = None
            if timer is not None:
                timer.cancel()

    def take(self) -> bytes:
        data = b"".join(self.chunks) if len(self.chunks) != 1 else self.chunks[0]
        self.chunks.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    def reusable(self) -> bool:
        return self.complete and self.keep_alive and self.error is None and _usable(self)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.lost = True


def _time_out(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Response:
    """An upstream's answer: status and headers at once, the body as it comes."""

    def __init__(self, client: Client, conn: _Connection, read_timeout: float | None) -> None:
        self._client = client
        self._conn: _Connection | None = conn
        self._read_timeout = read_timeout
        self.status: int = conn.status
        headers: dict[str, str] = {}
        for name, value in conn.header_list:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        self.headers = headers

    def at_eof(self) -> bool:
        conn = self._conn
        return conn is None or (conn.complete and not conn.chunks)

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive; each wait is bounded by the read timeout."""
        # The connection is looked up again after every chunk: a reader that released the answer
        # meanwhile has handed it on.
        while (conn := self._conn) is not None:
            if conn.chunks:
                yield conn.take()
                continue
            if conn.complete:
                return
            if conn.error is not None:
                raise conn.error
            await conn.wait(self._read_timeout)

    async def read(self) -> bytes:
        """The whole body, however large: proxy/upstream.py reads answers through iter_any
        instead, held to BEHAVRY_UPSTREAM_MAX_ANSWER_BYTES."""
        parts = [chunk async for chunk in self.iter_any()]
        return b"".join(parts)

    def release(self) -> None:
        """Done with the answer: its connection goes back to the pool if it can be reused."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._client._give_back(conn, reuse=conn.reusable() and not conn.chunks)

    def close(self) -> None:
        """Drop the connection, so the upstream sees the disconnect (a 2026-07-28 cancel)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._client._give_back(conn, reuse=False)

    def __del__(self) -> None:
        # An answer dropped without release() or close() (a generator closed before it started)
        # would hold its pool slot for good; aiohttp's responses give theirs back when collected.
        if self._conn is not None:
            with contextlib.suppress(Exception):  # the loop may be gone
                self.close()


# RFC 9110 token characters. The framing headers are the client's own: one given by a caller (an
# upstream's credential header name is an admin's to type) would frame the request twice.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_OWN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer"})
_names_checked: set[str] = set()


def _check_names(headers: dict[str, str]) -> None:
    for name in headers:
        if name in _names_checked:
            continue
        if not _TOKEN.fullmatch(name):
            raise HttpError(f"header name {name!r} is not an HTTP token")
        if name.lower() in _OWN_HEADERS:
            raise HttpError(f"header {name!r} is set by the client itself")
        if len(_names_checked) < 1024:  # the names are few and repeat; bounded all the same
            _names_checked.add(name)


def _header_block(headers: dict[str, str]) -> bytes:
    """The header lines, refused if a name is not a token or is a framing header, or if a value
    would break a line (a request smuggled in the header) or is not latin-1. Values are checked
    by one scan of the joined text, not one per field."""
    _check_names(headers)
    block = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    if block.count("\n") != len(headers) or block.count("\r") != len(headers) or "\0" in block:
        raise HttpError("a header name or value holds a line break")
    try:
        return block.encode("latin-1")
    except UnicodeEncodeError:
        raise HttpError("a header name or value is not latin-1") from None


class Client:
    """Keep-alive connections to one origin (scheme, host, port), at most `limit` at once."""

    def __init__(self, *, scheme: str, host: str, port: int, ssl: Any = None, limit: int = 200) -> None:
        self.loop = asyncio.get_running_loop()
        self.host = host
        self.port = port
        self.ssl = ssl if scheme == "https" else None
        default_port = 443 if scheme == "https" else 80
        host_text = f"[{host}]" if ":" in host else host
        self.host_header = host_text if port == default_port else f"{host_text}:{port}"
        self.limit = limit
        self.idle: collections.deque[_Connection] = collections.deque()
        self.open = 0  # connections counted against `limit`: idle, in use, or connecting
        self.queue: collections.deque[asyncio.Future] = collections.deque()
        self.closed = False

    async def request(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes | None = None,
        *,
        connect_timeout: float | None,
        read_timeout: float | None,
        pool_timeout: float | None,
    ) -> Response:
        """Send one request and return once the answer's headers are in.

        connect_timeout bounds a new connection (TCP and TLS); read_timeout bounds each wait for
        bytes of the answer; pool_timeout bounds the wait for a free connection when all `limit`
        are busy. A failure raises HttpError or TimeoutError.
        """
        head = self._head(method, target, headers, body)
        for attempt in (1, 2):
            conn = await self._acquire(connect_timeout, pool_timeout, fresh=attempt == 2)
            conn.start()
            try:
                assert conn.transport is not None
                conn.transport.write(head + body if body else head)
                while not conn.headers_done:
                    if conn.error is not None:
                        raise conn.error
                    await conn.wait(read_timeout)
            except HttpError:
                self._give_back(conn, reuse=False)
                # A kept-alive connection the server closed as we wrote, before any byte of an
                # answer: most likely the request was never read, but a server that died while
                # acting on it looks the same. Only a request that may run twice goes once more,
                # on a new connection, as aiohttp does; a POST (a tool call) is never repeated.
                # (A connection known to be closing is never handed out: see _usable.)
                if attempt == 1 and conn.reused and not conn.got_bytes and method in IDEMPOTENT_METHODS:
                    continue
                raise
            except BaseException:
                self._give_back(conn, reuse=False)
                raise
            return Response(self, conn, read_timeout)
        raise AssertionError("unreachable")

    def _head(self, method: str, target: str, headers: dict[str, str], body: bytes | None) -> bytes:
        start = f"{method} {target} HTTP/1.1\r\nHost: {self.host_header}\r\n".encode("latin-1")
        length = b"Content-Length: %d\r\n" % len(body or b"") if body is not None or method == "POST" else b""
        return b"".join((start, _header_block(headers), length, b"\r\n"))

    async def _acquire(
        self, connect_timeout: float | None, pool_timeout: float | None, *, fresh: bool = False
    ) -> _Connection:
        """A kept-alive connection (unless `fresh`), a new one, or one handed over when busy."""
        if self.closed:
            raise HttpError("the client is closed")
        now = time.monotonic()
        while self.idle and not fresh:
            conn = self.idle.pop()  # the most recently used: the least likely to be timed out
            if _usable(conn) and now - conn.idle_since < IDLE_SECONDS:
                conn.reused = True
                return conn
            conn.close()
            self.open -= 1  # no one waits while connections sit idle
        if self.open >= self.limit:
            waiter = self.loop.create_future()
            self.queue.append(waiter)
            timer = None if pool_timeout is None else self.loop.call_later(pool_timeout, _time_out, waiter)
            try:
                conn = await waiter  # a connection handed over by _give_back, or None: a free slot
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    # Handed over as this wait ended: pass it on, so it is not leaked.
                    handed = waiter.result()
                    if handed is not None:
                        self._give_back(handed, reuse=True)
                    else:
                        self._release_slot()
                elif waiter in self.queue:
                    self.queue.remove(waiter)
                raise
            finally:
                if timer is not None:
                    timer.cancel()
            if conn is not None:
                conn.reused = True
                return conn
        else:
            self.open += 1
        try:
            return await self._connect(connect_timeout)
        except BaseException:
            self._release_slot()
            raise

    async def _connect(self, connect_timeout: float | None) -> _Connection:
        try:
            async with asyncio.timeout(connect_timeout):
                _, conn = await self.loop.create_connection(
                    lambda: _Connection(self.loop),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                )
        except TimeoutError:
            raise  # an OSError too, but it must read as a timeout, not as unreachable
        except OSError as exc:
            raise HttpError(f"cannot connect to {self.host_header}: {exc}") from exc
        return conn

    def _give_back(self, conn: _Connection, *, reuse: bool) -> None:
        if reuse and not self.closed and _usable(conn):
            conn.idle_since = time.monotonic()
            while self.queue:
                waiter = self.queue.popleft()
                if not waiter.done():
                    waiter.set_result(conn)
                    return
            self.idle.append(conn)
            return
        conn.close()
        self._release_slot()

    def _release_slot(self) -> None:
        """A connection's slot came free (it closed, or its connect failed): a waiter may open
        one in its place, else the count goes down."""
        while self.queue:
            waiter = self.queue.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on: the count stays
                return
        self.open -= 1

    def close(self) -> None:
        """Close every idle connection now; ones in use close when their answer is let go."""
        self.closed = True
        while self.idle:
            conn = self.idle.pop()
            self.open -= 1
            with contextlib.suppress(Exception):  # a closed loop refuses; the rest still go
                conn.close()


def _usable(conn: _Connection) -> bool:
    """Not lost, not closing: the server's end of file may be seen (eof_received, a failed write)
    a loop step before connection_lost runs."""
    return not conn.lost and conn.transport is not None and not conn.transport.is_closing()
