"""JSON-RPC 2.0 and MCP protocol constants, parsing and error shapes for the MCP endpoint."""

from __future__ import annotations

import base64
import json
from typing import Any

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SESSION_NOT_FOUND = -32001  # legacy-era transport errors live in the implementation-defined range
HEADER_MISMATCH = -32020
MISSING_CLIENT_CAPABILITY = -32021
UNSUPPORTED_VERSION = -32022
# Behavry's own application errors sit outside -32768..-32000 (2026-07-28 allocation policy).
POLICY_DENIED = 1403
UPSTREAM_FAILED = 1502

LEGACY_VERSIONS = ("2025-03-26", "2025-06-18", "2025-11-25")
# What initialize agrees to. Not 2025-03-26, which obliges a server to take JSON-RPC batches
# (Behavry refuses them: a batch is many decisions in one body); asked for it, Behavry offers its
# latest and the client decides, as version negotiation provides.
NEGOTIATED_LEGACY_VERSIONS = ("2025-06-18", "2025-11-25")
LATEST_LEGACY = "2025-11-25"
MODERN_VERSIONS = ("2026-07-28",)
LATEST_MODERN = "2026-07-28"
META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CLIENT_INFO = "io.modelcontextprotocol/clientInfo"
META_CLIENT_CAPS = "io.modelcontextprotocol/clientCapabilities"
META_SERVER_INFO = "io.modelcontextprotocol/serverInfo"

# Methods Behavry forwards. Anything else is answered -32601 here and never reaches an upstream.
CLIENT_METHODS = {
    "initialize",
    "ping",
    "server/discover",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
}
NAMED_METHODS = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
# The HTTP status a 2026-07-28 answer carries with a JSON-RPC error (200 for any other code), as
# the SDK's ERROR_CODE_HTTP_STATUS: that era's clients read the status before the body, and an
# upstream's error relayed through Behavry should look as it would directly.
MODERN_ERROR_STATUS = {
    PARSE_ERROR: 400,
    INVALID_REQUEST: 400,
    INVALID_PARAMS: 400,
    HEADER_MISMATCH: 400,
    MISSING_CLIENT_CAPABILITY: 400,
    UNSUPPORTED_VERSION: 400,
    METHOD_NOT_FOUND: 404,
}


class RpcError(Exception):
    """A malformed or refused message, answered as a JSON-RPC error with an HTTP status."""

    def __init__(self, code: int, message: str, *, status: int = 400, data: Any = None, id: Any = None):
        super().__init__(message)
        self.code, self.message, self.status, self.data, self.id = code, message, status, data, id

    def body(self) -> dict[str, Any]:
        return error_message(self.id, self.code, self.message, self.data)


def error_message(id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": id, "error": error}


def result_message(id: Any, result: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id, "result": result}


def _valid_id(value: Any) -> bool:
    return (isinstance(value, str) and len(value) <= 200) or (isinstance(value, int) and not isinstance(value, bool))


def parse_message(body: bytes) -> dict[str, Any]:
    """One JSON-RPC request, notification or response (batches were removed in 2025-06-18)."""
    try:
        message = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise RpcError(PARSE_ERROR, "Parse error: the body is not valid JSON") from None
    if isinstance(message, list):
        raise RpcError(INVALID_REQUEST, "Invalid Request: JSON-RPC batches are not supported by MCP")
    if not isinstance(message, dict):
        raise RpcError(INVALID_REQUEST, "Invalid Request: expected a JSON object")
    msg_id = message.get("id")
    if message.get("jsonrpc") != "2.0":
        raise RpcError(
            INVALID_REQUEST, "Invalid Request: 'jsonrpc' must be \"2.0\"", id=msg_id if _valid_id(msg_id) else None
        )
    if "method" in message:
        if not isinstance(message["method"], str) or not message["method"]:
            raise RpcError(INVALID_REQUEST, "Invalid Request: 'method' must be a non-empty string")
        if "id" in message and not _valid_id(msg_id):
            raise RpcError(INVALID_REQUEST, "Invalid Request: 'id' must be a string or an integer")
        params = message.get("params", {})
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise RpcError(
                INVALID_PARAMS, "Invalid params: 'params' must be an object", id=msg_id if "id" in message else None
            )
        message["params"] = params
        meta = params.get("_meta", {})
        if meta is not None and not isinstance(meta, dict):
            raise RpcError(INVALID_PARAMS, "Invalid params: '_meta' must be an object", id=msg_id)
        return message
    if "id" in message and ("result" in message or "error" in message):
        if not _valid_id(msg_id):
            raise RpcError(INVALID_REQUEST, "Invalid Request: response 'id' must be a string or an integer")
        return message
    raise RpcError(INVALID_REQUEST, "Invalid Request: neither a request, a notification nor a response")


def is_request(message: dict) -> bool:
    return "method" in message and "id" in message


def is_notification(message: dict) -> bool:
    return "method" in message and "id" not in message


_SENTINEL_START, _SENTINEL_END = "=?base64?", "?="


def _is_sentinel(value: str) -> bool:
    return value.startswith(_SENTINEL_START) and value.endswith(_SENTINEL_END) and len(value) >= 11


def header_value(raw: str) -> str | None:
    """Decode the `=?base64?…?=` form the 2026-07-28 transport uses for values that are not
    header-safe. A malformed one (bad or non-canonical base64, bad UTF-8) is None, so that it
    never equals a body value: taking it verbatim would let a header stand for a value the body
    does not hold. As the SDK's decode_header_value."""
    if not _is_sentinel(raw):
        return raw
    payload = raw[len(_SENTINEL_START) : -len(_SENTINEL_END)]
    try:
        decoded = base64.b64decode(payload, validate=True)
        if base64.b64encode(decoded).decode("ascii") != payload:
            return None  # non-canonical: two headers for one value
        return decoded.decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None


def header_encode(value: str) -> str:
    # A value that itself looks like the encoded form is encoded too, or the receiver would decode
    # it into something else (the SDK's encode_header_value does the same).
    if value.isascii() and value.isprintable() and value == value.strip() and not _is_sentinel(value):
        return value
    # A JSON string may hold a lone surrogate ("\ud800" parses to one): encoded as is, never an
    # exception on the forward path. A peer's strict decode then sees a mismatch, a clean -32020.
    return _SENTINEL_START + base64.b64encode(value.encode("utf-8", "surrogatepass")).decode("ascii") + _SENTINEL_END
