"""The one decision function every tools/call (and named read) goes through.

Order of checks (DESIGN §1), first terminal result wins:
1. agent active; 2. DLP on arguments; 3. baseline manifest; 4. pinned definition; 5. policy rules;
6. default deny. Checks 2-4 arrive with their issues and hook in here, nowhere else.
Anything raised here is turned into a `system.fail_closed` deny by the caller.

Every check must also be answerable from per-process caches alone (`decide_tool_call(cached_only=True)`),
so the event loop decides without a hop to a database thread; when a cache is stale the caller
decides on a database thread instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from policies.engine import CallContext, Decision, PolicyEngine, current_engine, engine_cache
from proxy.classify import MAX_RESOURCE, Classification, NotCached, classify_call
from proxy.identity import AgentIdentity

FAIL_CLOSED = "system.fail_closed"
AGENT_SUSPENDED = "system.agent_suspended"
RESOURCE_TOO_LONG = "system.resource_too_long"


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
    cached_only: bool = False,
) -> ToolCallDecision | None:
    """`action`/`resource` override the catalog for calls that are not tools (resources/read,
    prompts/get). May query the database: call it off the event loop, unless `cached_only`, which
    decides from this process's caches alone and returns None when one of them needs a database
    read first (the caller then decides again on a database thread)."""
    engine: Callable[[], PolicyEngine] = current_engine
    if cached_only:
        fresh = engine_cache.peek()
        if fresh is None:
            return None
        engine = lambda: fresh  # noqa: E731
        try:
            classification = classify_call(server_id=server_id, tool=tool, arguments=arguments, cached_only=True)
        except NotCached:
            return None
    else:
        classification = classify_call(server_id=server_id, tool=tool, arguments=arguments)
    return _decide(identity, server_slug, tool, arguments, _override(classification, action, resource), engine)


def _override(classification: Classification, action: str | None, resource: str | None) -> Classification:
    if action is None and resource is None:
        return classification
    return Classification(
        action=action or classification.action,
        resource=classification.resource if resource is None else resource,
        resource_argument=classification.resource_argument,
        known_tool=classification.known_tool,
    )


def _decide(
    identity: AgentIdentity,
    server_slug: str,
    tool: str,
    arguments: dict[str, Any],
    classification: Classification,
    engine: Callable[[], PolicyEngine],
) -> ToolCallDecision:
    if not identity.active:
        return ToolCallDecision(Decision("deny", AGENT_SUSPENDED, "The agent is suspended."), classification)
    if len(classification.resource) > MAX_RESOURCE:
        # Deny rules on resources could not be checked against what would be forwarded.
        reason = f"The call's resource is longer than {MAX_RESOURCE} characters, too long to check against policy."
        return ToolCallDecision(Decision("deny", RESOURCE_TOO_LONG, reason), classification)
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
    return ToolCallDecision(engine().decide(ctx), classification)


def fail_closed(reason: str) -> Decision:
    return Decision("deny", FAIL_CLOSED, f"Behavry could not complete its checks, so the call is denied ({reason}).")
