"""Turning a tools/call into (action, resource) for policy, using the server's tool catalog."""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Any

from proxy.catalog import tool_default_action, tool_resource_argument
from proxy.generation import generation_watch
from proxy.identity import TTLCache
from proxy.models import Tool

# Resources longer than this are refused (system.resource_too_long): the audit column holds this
# much, and a policy decision on a cut value would not be about what is forwarded.
MAX_RESOURCE = 1000


@dataclass(frozen=True)
class Classification:
    action: str
    resource: str
    resource_argument: str
    known_tool: bool


# Like identities: checked against the cache generation, so an admin's reclassification applies
# within a second; the lifetime only bounds what a missing trigger could cost.
_CACHE_SECONDS = 60.0
_rows = TTLCache("tool", lambda: _CACHE_SECONDS, max_entries=50_000)


class NotCached(LookupError):
    """A cached-only lookup found nothing fresh: the caller goes to the database instead."""


def _catalog_row(server_id: int, tool: str, *, cached_only: bool = False) -> tuple[str, str] | None:
    """(action, resource_argument) from the catalog, cached per process (see TTLCache). With
    `cached_only` the caller is the event loop, which checks the generation without a query."""
    key = (server_id, tool)
    generation = generation_watch.peek() if cached_only else generation_watch.current()
    hit, value = _rows.get(key, generation, _read_row, server_id, tool)  # renewal starts only on the loop
    if hit:
        return value
    if cached_only:
        raise NotCached(key)
    return _read_row(server_id, tool)


def _read_row(server_id: int, tool: str) -> tuple[str, str] | None:
    started = _rows.read_started()
    row = (
        Tool.objects.filter(server_id=server_id, name=tool)
        .only("default_action", "action_override", "resource_argument")
        .first()
    )
    value = (row.action, row.resource_argument) if row is not None else None
    _rows.put((server_id, tool), value, started)
    return value


def classify_call(
    *, server_id: int | None, tool: str, arguments: dict[str, Any] | None, cached_only: bool = False
) -> Classification:
    """Action from the catalog (an admin override wins), resource from the tool's resource argument.

    A tool missing from the catalog (never listed, or a hypothetical one in a simulation) is
    classified from its name alone, and its resource from the usual argument names.
    `cached_only` raises NotCached instead of reading a catalog row the cache does not hold.
    """
    row = _catalog_row(server_id, tool, cached_only=cached_only) if server_id is not None else None
    arguments = arguments if isinstance(arguments, dict) else {}
    if row is not None:
        action, resource_argument = row
    else:
        action = tool_default_action(tool, {})
        resource_argument = tool_resource_argument({"properties": arguments})
    return Classification(
        action=action,
        resource=resource_text(arguments.get(resource_argument)) if resource_argument else "",
        resource_argument=resource_argument,
        known_tool=row is not None,
    )


def resource_text(value: Any) -> str:
    """The resource as policy matches it: whole (a deny glob must see what is forwarded, so a
    resource longer than MAX_RESOURCE is refused by the decision, never cut), and a path in its
    normal form (normal_path)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return normal_path(value)
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def normal_path(text: str) -> str:
    """A filesystem path (or file: URI) with `.`, `..` and repeated slashes resolved, so that
    `/srv/../etc/shadow` and `//etc/shadow` meet a rule on `/etc/*`. Anything else (other URLs,
    names, `owner/repo`) is left as it is. What is forwarded is the agent's own argument; an
    upstream that resolves paths reaches the same file the rule saw."""
    prefix = ""
    if text.startswith("file://"):
        prefix, text = "file://", text[len("file://") :]
    elif "://" in text or "/" not in text:
        return text
    if "." not in text and "//" not in text:
        return prefix + text  # the usual case: nothing to resolve
    absolute = text.startswith("/")
    normal = posixpath.normpath(text)
    if absolute:
        normal = "/" + normal.lstrip("/")  # normpath keeps a leading "//" (POSIX leaves it open)
    if text.endswith("/") and not normal.endswith("/"):
        normal += "/"  # a directory stays one
    return prefix + normal
