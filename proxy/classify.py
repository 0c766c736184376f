"""Turning a tools/call into (action, resource) for policy, using the server's tool catalog."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from proxy.catalog import tool_default_action, tool_resource_argument
from proxy.models import Tool

MAX_RESOURCE = 1000


@dataclass(frozen=True)
class Classification:
    action: str
    resource: str
    resource_argument: str
    known_tool: bool


def classify_call(*, server_id: int | None, tool: str, arguments: dict[str, Any] | None) -> Classification:
    """Action from the catalog (an admin override wins), resource from the tool's resource argument.

    A tool missing from the catalog (never listed, or a hypothetical one in a simulation) is
    classified from its name alone, and its resource from the usual argument names.
    """
    row = None
    if server_id is not None:
        row = (
            Tool.objects.filter(server_id=server_id, name=tool)
            .only("default_action", "action_override", "resource_argument")
            .first()
        )
    arguments = arguments if isinstance(arguments, dict) else {}
    if row is not None:
        action = row.action
        resource_argument = row.resource_argument
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
    if value is None:
        return ""
    if isinstance(value, str):
        return value[:MAX_RESOURCE]
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)[:MAX_RESOURCE]
