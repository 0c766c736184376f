"""Hashing and signing for the audit chains.

Chain scope: one chain per agent (`agent:<id>`) plus one `admin` chain. Appends to a chain are
serialised by locking its `AuditChainHead` row, so proxy processes that serve different agents
append in parallel and never fork a chain; one global chain would make every tool call in the
deployment queue behind one lock. An agent's own calls are already ordered by its requests, so
a per-agent order is the order that matters when reading its history.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from django.conf import settings

from audit.models import GENESIS_HASH  # noqa: F401  (re-exported for callers)

ADMIN_CHAIN = "admin"

# The columns covered by event_hash, in no particular order (canonical JSON sorts keys).
HASHED_FIELDS = (
    "chain",
    "seq",
    "timestamp",
    "kind",
    "agent_id",
    "agent_name",
    "session",
    "server",
    "tool",
    "action",
    "resource",
    "decision",
    "policy_id",
    "reason",
    "request_id",
    "actor",
    "latency_ms",
    "arguments",
    "trace",
    "dlp_findings",
    "details",
)


def agent_chain(agent_id: int) -> str:
    return f"agent:{agent_id}"


def _normalise(value: Any) -> Any:
    """Make a value hash the same before storage and after a database round trip.

    PostgreSQL jsonb turns 1e20 into 100000000000000000000 and 1.0 may come back as 1.0 or 1, so
    integral floats hash as integers. NaN and infinities have no JSON form and are refused.
    """
    if value.__class__ is str:  # most leaves: skip the checks below
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("audit fields cannot hold NaN or infinity")
        return int(value) if value.is_integer() else value
    if isinstance(value, dict):
        return {str(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normalise(v) for v in value]
    if isinstance(value, datetime):
        return timestamp_text(value)
    return value


def timestamp_text(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


# One encoder for every call: json.dumps() with these options builds a new JSONEncoder each time.
_canonical_encode = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def canonical_json(value: Any) -> str:
    if value.__class__ in _EMPTY_JSON and not value:  # no trace, no findings: most events
        return _EMPTY_JSON[value.__class__]
    return _canonical_encode(_normalise(value))


_EMPTY_JSON = {dict: "{}", list: "[]", tuple: "[]"}


def event_hash(fields: dict[str, Any], previous_hash: str) -> str:
    """The reference definition: sha256 over canonical_json(fields) + previous_hash."""
    return hashlib.sha256((canonical_json(fields) + previous_hash).encode("utf-8")).hexdigest()


JSON_FIELDS = ("arguments", "trace", "dlp_findings", "details")
_SORTED_FIELDS = tuple(sorted(HASHED_FIELDS))
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def _scalar_text(value: Any) -> str:
    if value.__class__ is int:  # seq, agent_id: JSON's int form without the generic encoder
        return int.__repr__(value)
    if value is None:
        return "null"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("audit fields cannot hold NaN or infinity")
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, datetime):
        return '"' + timestamp_text(value) + '"'
    return _dumps(value)


_STR, _JSON, _INT, _FLOAT, _TIME = range(5)
_KINDS = {"seq": _INT, "agent_id": _INT, "latency_ms": _FLOAT, "timestamp": _TIME, **dict.fromkeys(JSON_FIELDS, _JSON)}


def make_row_hasher(columns: tuple[str, ...]):
    """A fast hash function over database rows (tuples in `columns` order), for verification.

    Same bytes as event_hash_from_text() (a test holds them together), without building a dict
    or going through the generic encoder per value: it is the inner loop of verifying millions.
    """
    plan = [(f'"{key}":', columns.index(key), _KINDS.get(key, _STR)) for key in _SORTED_FIELDS]
    previous = columns.index("previous_hash")
    quote = json.encoder.encode_basestring  # the C implementation, non-ASCII kept as is
    sha256 = hashlib.sha256

    def row_hash(row) -> str:
        out = []
        for prefix, index, kind in plan:
            value = row[index]
            if kind == _STR:
                out.append(prefix + quote(value))
            elif kind == _JSON:
                out.append(prefix + value)
            elif value is None:
                out.append(prefix + "null")
            elif kind == _INT:
                out.append(prefix + str(value))
            elif kind == _FLOAT:
                out.append(prefix + _scalar_text(value))
            else:
                out.append(prefix + '"' + timestamp_text(value) + '"')
        return sha256(("{" + ",".join(out) + "}" + row[previous]).encode("utf-8")).hexdigest()

    return row_hash


def event_hash_from_text(values: dict[str, Any], previous_hash: str) -> str:
    """The same hash as event_hash(), built from stored text without parsing JSON.

    `values` holds the scalar columns as Python values and the JSON columns as their stored
    canonical text; the timestamp may also be given as its timestamp_text(), which quotes to
    the same bytes. Joining `"key":value` pairs in sorted key order with no whitespace is exactly
    what canonical_json() produces for the whole dict, so the two functions agree byte for byte
    (a test holds them to it).
    """
    parts = [
        prefix
        + (
            value
            if is_json
            else _quote(value)  # most columns: the C quoting function directly
            if value.__class__ is str
            else _scalar_text(value)
        )
        for key, prefix, is_json in _TEXT_PLAN
        for value in (values[key],)
    ]
    return hashlib.sha256(("{" + ",".join(parts) + "}" + previous_hash).encode("utf-8")).hexdigest()


_TEXT_PLAN = tuple((key, f'"{key}":', key in JSON_FIELDS) for key in _SORTED_FIELDS)
_quote = json.encoder.encode_basestring  # what _dumps does for a str, without its method call


@lru_cache(maxsize=4)
def _signing_key(secret: str) -> bytes:
    return hashlib.sha256(b"behavry-audit-signing-v1:" + secret.encode()).digest()


def sign(*parts: Any) -> str:
    message = "|".join(map(str, parts)).encode()
    # Not hmac.digest(key, message, "sha256"): it looks the algorithm up by name on every call,
    # 2.3 against 2.0 µs here.
    return hmac.new(_signing_key(settings.SECRET_KEY), message, hashlib.sha256).hexdigest()


def head_signature(chain: str, seq: int, last_hash: str) -> str:
    return sign("head", chain, seq, last_hash)


def checkpoint_signature(chain: str, up_to_seq: int, up_to_hash: str) -> str:
    return sign("checkpoint", chain, up_to_seq, up_to_hash)


def head_signature_ok(signature: str, chain: str, seq: int, last_hash: str) -> bool:
    return hmac.compare_digest(signature, head_signature(chain, seq, last_hash))


def checkpoint_signature_ok(signature: str, chain: str, up_to_seq: int, up_to_hash: str) -> bool:
    return hmac.compare_digest(signature, checkpoint_signature(chain, up_to_seq, up_to_hash))


def finding_hash(value: str) -> str:
    """Salted hash of a DLP match, so the same secret can be recognised without being stored."""
    return sign("dlp", value)[:32]
