from __future__ import annotations

from typing import Any

from agents.models import Agent
from policies.engine import CallContext, current_engine
from proxy.classify import classify_call
from proxy.models import UpstreamServer


def policy_simulate(
    *,
    agent: Agent,
    server: str,
    tool: str,
    arguments: dict[str, Any] | None = None,
    action: str | None = None,
    resource: str | None = None,
    risk_tier: str | None = None,
) -> dict[str, Any]:
    """Decide a hypothetical call with the live rules, exactly as the proxy would classify it."""
    server_id = UpstreamServer.objects.filter(slug=server).values_list("pk", flat=True).first()
    classification = classify_call(server_id=server_id, tool=tool, arguments=arguments or {})
    ctx = CallContext(
        agent_id=agent.pk,
        server=server,
        tool=tool,
        action=action or classification.action,
        resource=classification.resource if resource is None else resource,
        arguments=arguments or {},
        roles=frozenset(agent.roles.values_list("name", flat=True)),
        risk_tier=risk_tier or agent.risk_tier,
    )
    decision = current_engine().decide(ctx)
    return {
        **decision.as_dict(),
        "call": {
            "agent": agent.pk,
            "server": server,
            "tool": tool,
            "action": ctx.action,
            "resource": ctx.resource,
            "risk_tier": ctx.risk_tier,
            "roles": sorted(ctx.roles),
        },
    }
