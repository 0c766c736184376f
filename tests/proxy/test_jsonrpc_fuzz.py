"""Fuzzing the MCP endpoint's JSON-RPC handling with Hypothesis, over real HTTP.

Bodies: random bytes, random JSON (odd Unicode, huge numbers, deep nesting, NUL, lone surrogate
escapes), and near-valid `tools/call` messages with fuzzed names and arguments, in both eras.
For every body: no 5xx, the answer is JSON-RPC (or an HTTP 4xx with a JSON-RPC error), and, checked
on the upstream's side through a recording relay in front of the real demo upstream, no
`tools/call` other than the one the policy allows (`echo`) ever arrives there.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.services import policy_create
from proxy.services import upstream_server_create
from tests.conftest import TEST_ACTOR, free_port

pytestmark = pytest.mark.django_db(transaction=True)

MODERN = "2026-07-28"
# Enough to find crashes in the parser and the routing in front of policy; the suite stays fast.
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


class RecordingRelay:
    """A TCP relay to the real upstream that keeps every byte the upstream was sent."""

    def __init__(self, upstream_url: str):
        match = re.match(r"http://([^:/]+):(\d+)(/.*)", upstream_url)
        self.host, self.port, self.path = match.group(1), int(match.group(2)), match.group(3)
        self.listen_port = free_port()
        self.received = bytearray()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}{self.path}"

    def tool_calls(self) -> list[str]:
        with self._lock:
            data = bytes(self.received)
        names = []
        for match in re.finditer(rb'"method"\s*:\s*"tools/call"', data):
            tail = data[match.end() : match.end() + 2000]
            name = re.search(rb'"name"\s*:\s*"((?:[^"\\]|\\.)*)"', tail)
            names.append(name.group(1).decode("utf-8", "replace") if name else "?")
        return names

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)

        async def pipe(reader, writer, record: bool):
            try:
                while data := await reader.read(65536):
                    if record:
                        with self._lock:
                            self.received.extend(data)
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        async def handle(client_reader, client_writer):
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
            await asyncio.gather(pipe(client_reader, up_writer, True), pipe(up_reader, client_writer, False))

        async def main():
            await asyncio.start_server(handle, "127.0.0.1", self.listen_port)
            ready.set()
            await asyncio.Event().wait()

        self._loop.run_until_complete(main())


@pytest.fixture(scope="module")
def relay(demo_upstream):
    return RecordingRelay(demo_upstream)


@pytest.fixture
def endpoint(relay, behavry_url, token):
    upstream_server_create(slug="fuzz", name="Fuzz target", url=relay.url, by=TEST_ACTOR)
    policy_create(data={"name": "echo only", "effect": "allow", "tools": ["echo"]}, by=TEST_ACTOR)
    with httpx.Client(base_url=behavry_url, timeout=30) as http:
        yield http, token


def post(http, token, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return http.post(
        "/mcp/fuzz",
        content=body,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            **(headers or {}),
        },
    )


def assert_answered_as_json_rpc(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code in (202, 204) or not response.content:
        return
    text = response.text
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        datas = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
        assert datas, text[:500]
        text = datas[-1]
    message = json.loads(text)
    assert message.get("jsonrpc") == "2.0", text[:500]
    assert ("result" in message) != ("error" in message), text[:500]
    if "error" in message:
        assert isinstance(message["error"]["code"], int) and isinstance(message["error"]["message"], str)


def assert_nothing_but_echo_reached_the_upstream(relay: RecordingRelay) -> None:
    assert set(relay.tool_calls()) <= {"echo"}, relay.tool_calls()


odd_text = st.text(
    alphabet=st.characters(codec=None, exclude_categories=()),  # every code point, controls and NUL included
    max_size=40,
) | st.sampled_from(["", "\x00", "\u202e", "\ufeff", "e\u0301", "💥" * 30, "a" * 5000, "tools/call", "echo"])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30) | st.floats() | odd_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(odd_text, inner, max_size=4),
    max_leaves=20,
)


def _dumps(value) -> bytes:
    # allow_nan: NaN/Infinity are not JSON, which is the point; surrogates are sent as escapes.
    return json.dumps(value, ensure_ascii=True, allow_nan=True).encode()


@FUZZ
@given(body=st.binary(max_size=300))
def test_random_bytes(endpoint, relay, body):
    http, token = endpoint
    assert_answered_as_json_rpc(post(http, token, body, {"MCP-Protocol-Version": MODERN}))
    assert_nothing_but_echo_reached_the_upstream(relay)


@FUZZ
@given(value=json_values)
def test_random_json_values(endpoint, relay, value):
    http, token = endpoint
    assert_answered_as_json_rpc(post(http, token, _dumps(value), {"MCP-Protocol-Version": MODERN}))
    assert_nothing_but_echo_reached_the_upstream(relay)


@FUZZ
@given(
    tool=st.sampled_from(["write_file", "delete_file", "send_email", "echo", "ECHO", "echo\x00", "ech\u043e"])
    | odd_text,
    arguments=json_values,
    msg_id=st.one_of(st.integers(min_value=-(2**70), max_value=2**70), odd_text, st.none(), st.booleans()),
    with_headers=st.booleans(),
    method=st.sampled_from(["tools/call", "tools/call", "resources/read", "prompts/get", "tools/list", "x/y"]),
)
def test_near_valid_tool_calls_in_the_modern_era(endpoint, relay, tool, arguments, msg_id, with_headers, method):
    http, token = endpoint
    body = {
        "jsonrpc": "2.0",
        "id": msg_id,
        "method": method,
        "params": {"name": tool, "arguments": arguments, "_meta": {"io.modelcontextprotocol/protocolVersion": MODERN}},
    }
    headers = {"MCP-Protocol-Version": MODERN}
    if with_headers:
        from proxy.jsonrpc import header_encode

        headers["Mcp-Method"] = method
        if isinstance(tool, str):
            headers["Mcp-Name"] = header_encode(tool)
    assert_answered_as_json_rpc(post(http, token, _dumps(body), headers))
    assert_nothing_but_echo_reached_the_upstream(relay)


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000 + b"]" * 100_000,  # deeper than any parser recursion limit
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":'
        + b"[" * 5000
        + b"]" * 5000
        + b"}}",
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\\ud800","arguments":{}}}',
        b'{"jsonrpc":"2.0","id":1e999,"method":"tools/call"}',
        b'{"jsonrpc":"2.0","id":NaN,"method":"tools/call"}',
        b'{"jsonrpc":"2.0","id":' + b"9" * 5000 + b',"method":"tools/call"}',
        '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"écho"}}'.encode("latin-1"),
        b"\xef\xbb\xbf{}",
    ],
    ids=["deep", "deep-args", "lone-surrogate", "huge-float", "nan", "huge-int", "latin-1", "bom"],
)
def test_pathological_bodies(endpoint, relay, raw):
    http, token = endpoint
    assert_answered_as_json_rpc(post(http, token, raw, {"MCP-Protocol-Version": MODERN}))
    assert_nothing_but_echo_reached_the_upstream(relay)


def test_an_oversized_body_is_413_and_not_forwarded(endpoint, relay, settings):
    http, token = endpoint
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"x":"'
    body += b"a" * (settings.BEHAVRY_MCP_MAX_BODY_BYTES + 10) + b'"}}}'
    response = post(http, token, body, {"MCP-Protocol-Version": MODERN})
    assert response.status_code == 413
    assert_nothing_but_echo_reached_the_upstream(relay)


def test_the_control_case_reaches_the_upstream(endpoint, relay):
    """Without this, a relay that recorded nothing would make every test above pass."""
    http, token = endpoint
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {
            "name": "echo",
            "arguments": {"text": "hello"},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientInfo": {"name": "fuzz", "version": "1"},
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }
    headers = {"MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/call", "Mcp-Name": "echo"}
    response = post(http, token, _dumps(body), headers)
    assert_answered_as_json_rpc(response)
    assert "hello" in response.text
    assert "echo" in relay.tool_calls()
