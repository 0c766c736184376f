"""The one decision function every tools/call (and named read) goes through.

Order of checks (DESIGN §1), first terminal result wins:
1. agent active; 2. DLP on arguments; 3. baseline manifest; 4. pinned definition; 5. policy rules;
6. default deny. Checks 2-4 arrive with their issues and hook in here, nowhere else.
Anything raised here is turned into a `system.fail_closed` deny by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from policies.engine import CallContext, Decision, current_engine
from proxy.classify import Classification, classify_call
from proxy.identity import AgentIdentity

FAIL_CLOSED = "system.fail_closed"
AGENT_SUSPENDED = "system.agent_suspended"


@dataclass
class ToolCallDecision:
    decision: Decision
    classification: Classification


def decide_tool_call(
    *,
    identity: AgentIdentity,
    server_id: int,
    server_slug: str,
    tool: str,
    arguments: dict[str, Any],
    action: str | None = None,
    resource: str | None = None,
) -> ToolCallDecision:
    """`action`/`resource` override the catalog for calls that are not tools (resources/read, prompts/get)."""
    classification = classify_call(server_id=server_id, tool=tool, arguments=arguments)
    if action is not None or resource is not None:
        classification = Classification(
            action=action or classification.action,
            resource=classification.resource if resource is None else resource,
            resource_argument=classification.resource_argument,
            known_tool=classification.known_tool,
        )
    if not identity.active:
        return ToolCallDecision(Decision("deny", AGENT_SUSPENDED, "The agent is suspended."), classification)
    ctx = CallContext(
        agent_id=identity.agent_id,
        server=server_slug,
        tool=tool,
        action=classification.action,
        resource=classification.resource,
        arguments=arguments,
        roles=identity.roles,
        risk_tier=identity.risk_tier,
    )
    return ToolCallDecision(current_engine().decide(ctx), classification)


def fail_closed(reason: str) -> Decision:
    return Decision("deny", FAIL_CLOSED, f"Behavry could not complete its checks, so the call is denied ({reason}).")
