"""proxy/http1.py, the upstream hop's HTTP/1.1 client, against raw asyncio servers that write
exactly the bytes each case needs: keep-alive reuse, the three ways a body ends, an idle
connection the server closed, limits and timeouts, and input it must refuse."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import ssl

import pytest

from proxy import http1

TIMEOUTS = {"connect_timeout": 2.0, "read_timeout": 2.0, "pool_timeout": 2.0}


class Server:
    """Runs `handler(reader, writer, server)` for each connection and counts connections."""

    def __init__(self, handler):
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.disconnected = asyncio.Event()
        self.server: asyncio.base_events.Server | None = None

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()

    async def _serve(self, reader, writer):
        self.connections += 1
        try:
            await self.handler(reader, writer, self)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.disconnected.set()
            writer.close()

    async def read_request(self, reader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")),
            0,
        )
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        return request


def ok(body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def answers_once(data: bytes, *, then_close: bool = False):
    """A handler that reads one request and writes `data`, then closes or stays silent."""

    async def handler(reader, writer, server):
        await server.read_request(reader)
        writer.write(data)
        await writer.drain()
        if not then_close:
            await asyncio.sleep(1)

    return handler


async def keep_alive(reader, writer, server):
    while True:
        request = await server.read_request(reader)
        writer.write(ok(b"echo:" + request.split(b"\r\n\r\n", 1)[1]))
        await writer.drain()


def client_for(server: Server, **kwargs) -> http1.Client:
    return http1.Client(scheme="http", host="127.0.0.1", port=server.port, **kwargs)


async def post(client: http1.Client, body: bytes = b"{}", **timeouts) -> tuple[int, bytes]:
    response = await client.request(
        "POST", "/mcp", {"Content-Type": "application/json"}, body, **{**TIMEOUTS, **timeouts}
    )
    data = await response.read()
    response.release()
    return response.status, data


async def test_requests_reuse_one_kept_alive_connection():
    async with Server(keep_alive) as server:
        client = client_for(server)
        answers = [await post(client, f"{{{i}}}".encode()) for i in range(5)]
        client.close()
    assert answers == [(200, f"echo:{{{i}}}".encode()) for i in range(5)]
    assert server.connections == 1
    first = server.requests[0].decode()
    assert first.startswith("POST /mcp HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}\r\n" in first and "Content-Length: 3\r\n" in first


async def test_a_chunked_answer_is_read_whole_and_the_connection_reused():
    async def chunked(reader, writer, server):
        while True:
            await server.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for part in (b"hello ", b"chunked ", b"world"):
                writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                await writer.drain()
            writer.write(b"0\r\n\r\n")

    async with Server(chunked) as server:
        client = client_for(server)
        assert await post(client) == (200, b"hello chunked world")
        assert await post(client) == (200, b"hello chunked world")
        client.close()
    assert server.connections == 1


async def test_an_answer_without_a_length_ends_with_the_connection():
    async def close_delimited(reader, writer, server):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npart one, ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"part two")
        await writer.drain()
        writer.close()

    async with Server(close_delimited) as server:
        client = client_for(server)
        assert await post(client) == (200, b"part one, part two")
        assert await post(client) == (200, b"part one, part two")  # a new connection: the old one ended
        client.close()
    assert server.connections == 2


async def test_a_connection_the_server_closed_while_idle_is_replaced():
    async def one_answer_then_close(reader, writer, server):
        request = await server.read_request(reader)
        writer.write(ok(b"only:" + request.split(b"\r\n\r\n", 1)[1]))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()  # keep-alive promised, then closed while idle

    async with Server(one_answer_then_close) as server:
        client = client_for(server)
        assert await post(client, b"1") == (200, b"only:1")
        await asyncio.sleep(0.2)
        assert await post(client, b"2") == (200, b"only:2")
        client.close()
    assert server.connections == 2


def close_on_second_request():
    """The race a check before reuse cannot see: the server closes as the request is written."""
    state = {"first": True}

    async def handler(reader, writer, server):
        if state["first"]:
            state["first"] = False
            await server.read_request(reader)
            writer.write(ok(b"a"))
            await writer.drain()
            await server.read_request(reader)  # the second request: read, then closed unanswered
            return
        await keep_alive(reader, writer, server)

    return handler


async def test_a_get_on_a_kept_alive_connection_closed_unanswered_is_retried_once():
    async with Server(close_on_second_request()) as server:
        client = client_for(server)
        assert await post(client) == (200, b"a")
        response = await client.request("GET", "/mcp", {}, None, **TIMEOUTS)
        assert response.status == 200
        response.close()
        client.close()
    assert server.connections == 2
    assert [request.split(b" ", 1)[0] for request in server.requests] == [b"POST", b"GET", b"GET"]


async def test_a_post_on_a_kept_alive_connection_closed_unanswered_is_not_repeated():
    """A tool call the upstream may have run is not sent twice: the caller gets the error."""
    async with Server(close_on_second_request()) as server:
        client = client_for(server)
        assert await post(client) == (200, b"a")
        with pytest.raises(http1.HttpError, match="closed the connection"):
            await post(client, b"once")
        client.close()
    assert server.connections == 1
    assert [request.rsplit(b"\r\n", 1)[1] for request in server.requests] == [b"{}", b"once"]


async def test_a_connection_that_sends_more_than_the_answer_is_not_reused():
    async def extra_answer(reader, writer, server):
        while True:
            await server.read_request(reader)
            writer.write(ok(b"asked") + ok(b"unasked"))
            await writer.drain()

    async with Server(extra_answer) as server:
        client = client_for(server)
        assert await post(client) == (200, b"asked")
        assert await post(client) == (200, b"asked")  # not the stray answer left on the old connection
        client.close()
    assert server.connections == 2


async def test_a_new_connection_closed_without_an_answer_is_an_error_not_a_retry():
    async def hang_up(reader, writer, server):
        await server.read_request(reader)

    async with Server(hang_up) as server:
        client = client_for(server)
        with pytest.raises(http1.HttpError, match="closed the connection"):
            await post(client)
        client.close()
    assert server.connections == 1  # sent once: a POST the server may have acted on is not repeated


async def test_an_answer_cut_off_mid_body_is_an_error():
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b"
    async with Server(answers_once(answer, then_close=True)) as server:
        client = client_for(server)
        response = await client.request("POST", "/mcp", {}, b"{}", **TIMEOUTS)
        with pytest.raises(http1.HttpError, match="closed the connection"):
            await response.read()
        response.close()
        client.close()


async def test_a_malformed_answer_is_an_error():
    async with Server(answers_once(b"this is not HTTP at all\r\n\r\n")) as server:
        client = client_for(server)
        with pytest.raises(http1.HttpError, match="malformed"):
            await post(client)
        client.close()


async def test_no_answer_within_the_read_timeout_raises_and_drops_the_connection():
    async def never_answer(reader, writer, server):
        await server.read_request(reader)
        await reader.read()  # until the client hangs up

    async with Server(never_answer) as server:
        client = client_for(server)
        with pytest.raises(TimeoutError):
            await post(client, read_timeout=0.2)
        await asyncio.wait_for(server.disconnected.wait(), 2)  # the server sees the hang-up
        assert client.open == 0 and not client.idle
        client.close()


async def test_closing_an_answer_mid_stream_hangs_up_and_frees_the_slot():
    async def stream_forever(reader, writer, server):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        while True:
            writer.write(b"d\r\n: keepalive\n\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)

    async with Server(stream_forever) as server:
        client = client_for(server, limit=1)
        response = await client.request("GET", "/mcp", {}, None, **TIMEOUTS)
        chunks = response.iter_any()
        assert b"keepalive" in await anext(chunks)
        assert not response.at_eof()
        response.close()
        await asyncio.wait_for(server.disconnected.wait(), 2)
        assert client.open == 0
        client.close()


async def test_at_the_limit_a_request_waits_for_a_free_connection_and_its_wait_is_bounded():
    release = asyncio.Event()

    async def held(reader, writer, server):
        while True:
            await server.read_request(reader)
            await release.wait()
            writer.write(ok(b"done"))
            await writer.drain()

    async with Server(held) as server:
        client = client_for(server, limit=1)
        first = asyncio.ensure_future(post(client))
        await asyncio.sleep(0.05)
        with pytest.raises(TimeoutError):
            await post(client, pool_timeout=0.1)  # the one connection is busy
        second = asyncio.ensure_future(post(client))
        await asyncio.sleep(0.05)
        release.set()
        assert await first == (200, b"done")
        assert await second == (200, b"done")  # handed the first one's connection
        client.close()
    assert server.connections == 1


async def test_a_failed_connect_frees_its_slot():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused
        client = http1.Client(scheme="http", host="127.0.0.1", port=port, limit=1)
        for _ in range(3):
            with pytest.raises(http1.HttpError, match="cannot connect"):
                await post(client)
        assert client.open == 0


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Injected": "a\r\nX-Smuggled: b"},
        {"X-Bad\nName": "a"},
        {"X-Null": "a\0b"},
        {"X-Lone-CR": "a\rb"},
        {"X-Not-Latin": "\u2603"},
    ],
)
async def test_a_header_that_could_split_the_request_is_refused_before_anything_is_sent(headers):
    async with Server(keep_alive) as server:
        client = client_for(server)
        with pytest.raises(http1.HttpError, match="header"):
            await client.request("POST", "/mcp", headers, b"{}", **TIMEOUTS)
        client.close()
    assert server.requests == []


async def test_a_large_answer_is_held_back_while_unread_and_then_read_whole():
    big = bytes(range(256)) * 4096 * 4  # 4 MiB, sixteen times the high-water mark

    async with Server(answers_once(ok(big))) as server:
        client = client_for(server)
        response = await client.request("POST", "/mcp", {}, b"{}", **TIMEOUTS)
        await asyncio.sleep(0.3)  # nobody reads: the connection stops reading past the mark
        held = response._conn.buffered
        received = bytearray()
        async for chunk in response.iter_any():
            received += chunk
            await asyncio.sleep(0)  # a slow reader: the connection pauses and resumes
        response.release()
        client.close()
    assert http1.READ_HIGH_WATER <= held < 2 * 1024 * 1024
    assert bytes(received) == big


async def test_a_closed_client_refuses_new_requests():
    async with Server(keep_alive) as server:
        client = client_for(server)
        await post(client)
        client.close()
        with pytest.raises(http1.HttpError, match="closed"):
            await post(client)
    with contextlib.suppress(Exception):
        client.close()


async def test_a_connection_closing_under_a_release_is_not_handed_to_the_next_request():
    """The server's end of file is read a loop step before connection_lost: a release in between
    must not give the closing connection to a waiting request (its write would go nowhere)."""

    async def answer_then_close_the_first(reader, writer, server):
        first = server.connections == 1
        while True:
            await server.read_request(reader)
            writer.write(ok(b"first" if first else b"second"))
            await writer.drain()
            if first:
                return  # Server._serve closes: FIN right after the answer

    async with Server(answer_then_close_the_first) as server:
        client = client_for(server, limit=1)
        response = await client.request("GET", "/mcp", {}, None, **TIMEOUTS)
        assert await response.read() == b"first"
        waiting = asyncio.ensure_future(post(client, read_timeout=None))  # would hang for good
        await asyncio.sleep(0)
        assert len(client.queue) == 1
        transport = response._conn.transport
        while not transport.is_closing():
            await asyncio.sleep(0)
        response.release()
        assert await asyncio.wait_for(waiting, 5) == (200, b"second")
        client.close()


async def test_an_interim_answer_before_the_real_one_is_skipped():
    answer = b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n" + ok(b"{}", "X-Real: yes\r\n")
    async with Server(answers_once(answer)) as server:
        client = client_for(server)
        response = await client.request("POST", "/mcp", {}, b"{}", **TIMEOUTS)
        assert (response.status, await response.read()) == (200, b"{}")
        assert response.headers.get("x-real") == "yes" and "link" not in response.headers
        response.release()
        client.close()


async def test_a_stray_answer_in_the_same_segment_does_not_change_the_status():
    async with Server(answers_once(ok(b"{}") + b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\ngone")) as server:
        client = client_for(server)
        assert await post(client) == (200, b"{}")
        client.close()


async def test_a_body_with_a_transfer_coding_other_than_chunked_ends_with_the_connection():
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nBODY"
    async with Server(answers_once(answer, then_close=True)) as server:
        client = client_for(server)
        assert await post(client) == (200, b"BODY")
        client.close()


async def test_a_protocol_switch_is_an_error():
    answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    async with Server(answers_once(answer)) as server:
        client = client_for(server)
        with pytest.raises(http1.HttpError, match="switched protocols"):
            await post(client)
        assert client.open == 0
        client.close()


async def test_a_connect_that_does_not_finish_in_time_is_a_timeout():
    async def never_handshake(reader, writer, server):
        await reader.read()  # a TLS client hello, never answered

    async with Server(never_handshake) as server:
        client = http1.Client(scheme="https", host="127.0.0.1", port=server.port, ssl=ssl.create_default_context())
        with pytest.raises(TimeoutError):
            await post(client, connect_timeout=0.3)
        assert client.open == 0
        client.close()


async def test_an_answer_dropped_without_release_gives_its_slot_back():
    async with Server(keep_alive) as server:
        client = client_for(server, limit=1)
        response = await client.request("POST", "/mcp", {}, b"{}", **TIMEOUTS)
        del response
        gc.collect()
        assert client.open == 0
        assert await post(client, pool_timeout=0.5) == (200, b"echo:{}")
        client.close()


@pytest.mark.parametrize("name", ["Host", "content-length", "Transfer-Encoding", "Connection", "X Spaced", "X:Colon"])
async def test_a_header_name_that_would_reframe_the_request_is_refused(name):
    async with Server(keep_alive) as server:
        client = client_for(server)
        with pytest.raises(http1.HttpError, match="header"):
            await client.request("POST", "/mcp", {name: "5"}, b"{}", **TIMEOUTS)
        client.close()
    assert server.requests == []


async def test_a_finished_wait_does_not_unregister_the_next_requests_wait():
    """A reader woken by its answer's end may resume after the connection has gone back to the
    pool and a new request on it has registered its own wait: that one must stay registered."""
    conn = http1._Connection(asyncio.get_running_loop())
    first = asyncio.ensure_future(conn.wait(None))
    await asyncio.sleep(0)
    conn._wake()  # the first wait's news: it is woken but has not run yet
    nxt = conn.waiter = asyncio.get_running_loop().create_future()  # the next request's wait
    await first
    assert conn.waiter is nxt


class TlsServer(Server):
    def __init__(self, handler, cert, key):
        super().__init__(handler)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self


async def test_an_https_upstream_is_verified_and_its_connection_kept_alive(tls_files):
    cert, key = tls_files
    async with TlsServer(keep_alive, cert, key) as server:
        trusting = ssl.create_default_context(cafile=str(cert))
        client = http1.Client(scheme="https", host="127.0.0.1", port=server.port, ssl=trusting)
        assert [await post(client, b"1"), await post(client, b"2")] == [(200, b"echo:1"), (200, b"echo:2")]
        client.close()
        assert server.connections == 1
        assert f"Host: 127.0.0.1:{server.port}\r\n".encode() in server.requests[0]

        # The same server with the system's CAs: its certificate is not trusted, nothing is sent.
        strict = http1.Client(scheme="https", host="127.0.0.1", port=server.port, ssl=ssl.create_default_context())
        with pytest.raises(http1.HttpError, match="cannot connect"):
            await post(strict, b"3")
        assert strict.open == 0
    assert len(server.requests) == 2
