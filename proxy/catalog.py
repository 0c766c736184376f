"""Classifying upstream tools: definition hash, default action verb, resource argument.

Annotations come from the upstream and are untrusted (MCP spec, "Tool annotations"): they may make
a tool look more dangerous than its name suggests, never less.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

from proxy.models import ToolAction

_DANGER = [ToolAction.READ, ToolAction.OTHER, ToolAction.WRITE, ToolAction.SEND, ToolAction.EXECUTE, ToolAction.DELETE]

_VERBS: dict[str, ToolAction] = {}
for _action, _words in {
    ToolAction.READ: "read get list search fetch query describe show find view lookup count stat inspect head",
    ToolAction.WRITE: "write create update put set add edit insert upload move rename commit patch save append modify",
    ToolAction.DELETE: "delete remove drop destroy purge rm erase truncate wipe reset",
    ToolAction.SEND: "send email mail post notify publish message tweet reply sms",
    ToolAction.EXECUTE: "exec execute run eval shell invoke call spawn trigger deploy",
}.items():
    for _word in _words.split():
        _VERBS[_word] = _action

_RESOURCE_ARGS = ("path", "file", "filename", "file_path", "url", "uri", "table", "repo", "repository", "resource")


def _first_word(name: str) -> str:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    words = [w for w in re.split(r"[\s_\-./:]+", spaced.lower()) if w]
    return words[0] if words else ""


def _max_danger(*actions: ToolAction) -> ToolAction:
    return max(actions, key=_DANGER.index)


def tool_default_action(name: str, annotations: dict[str, Any] | None) -> ToolAction:
    """The verb class from the tool's name, raised (never lowered) by explicit annotations."""
    by_name = _VERBS.get(_first_word(name), ToolAction.OTHER)
    annotations = annotations or {}
    by_hint = None
    if annotations.get("readOnlyHint") is True:
        by_hint = ToolAction.READ
    elif annotations.get("destructiveHint") is True:
        by_hint = ToolAction.DELETE
    elif annotations.get("readOnlyHint") is False:
        by_hint = ToolAction.WRITE
    if by_hint is None:
        return by_name
    if by_hint == ToolAction.READ:
        return by_name  # a read-only hint cannot make a tool look safer than its name
    return _max_danger(by_name, by_hint)


def tool_resource_argument(input_schema: dict[str, Any] | None) -> str:
    props = (input_schema or {}).get("properties") or {}
    if not isinstance(props, dict):
        return ""
    for candidate in _RESOURCE_ARGS:
        if candidate in props:
            return candidate
    return ""


def canonical_json(value: Any) -> str:
    """Stable JSON for hashing: sorted keys, no whitespace, UTF-8 kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def tool_definition_hash(definition: dict[str, Any]) -> str:
    """Hash of what a model reads about a tool; `_meta` and icons are presentation, left out."""
    relevant = {
        k: definition.get(k)
        for k in ("name", "title", "description", "inputSchema", "outputSchema", "annotations")
        if definition.get(k) is not None
    }
    # surrogatepass: json.loads lets an upstream send an unpaired surrogate, which strict UTF-8
    # cannot encode; every other string encodes to the same bytes as before, so hashes are unchanged.
    return hashlib.sha256(canonical_json(relevant).encode("utf-8", "surrogatepass")).hexdigest()


# U+0000 and unpaired surrogates: see storable_problem.
_UNSTORABLE_CHARACTER = re.compile("[\x00\ud800-\udfff]")


def storable_problem(value: Any) -> str | None:
    """Why `value` (JSON from an upstream) cannot be stored on SQLite and PostgreSQL, or None.

    Python's json.loads accepts what the databases refuse: NaN and Infinity (not JSON, so neither
    PostgreSQL's jsonb nor SQLite's JSON_VALID check takes them), U+0000 (PostgreSQL text and jsonb
    cannot hold it) and unpaired surrogates (not UTF-8). Walked with a stack, not recursion: how
    deep the value nests is the upstream's choice.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found = _UNSTORABLE_CHARACTER.search(item)
            if found:
                return "it holds U+0000" if found.group() == "\x00" else "it holds an unpaired surrogate"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return "it holds NaN or an infinite number"
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def upstream_url_problem(url: str) -> str | None:
    """Why `url` cannot be an upstream's endpoint, or None.

    Django's URLValidator wants a dotted domain, which refuses Docker and Kubernetes service names
    (`http://files-mcp:8080/mcp`), the usual way upstreams are reached. Behavry only needs http(s),
    a host, and a valid port.
    """
    from urllib.parse import urlsplit

    if not isinstance(url, str) or not url or any(c.isspace() for c in url):
        return "Enter a URL without spaces."
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "Enter a valid URL."
    if parts.scheme not in ("http", "https"):
        return "Use an http:// or https:// URL."
    if not parts.hostname:
        return "The URL needs a host."
    if port == 0:
        return "The port must be between 1 and 65535."
    return None
