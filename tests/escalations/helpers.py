"""Opening escalations the way the proxy does, through the service, for the non-HTTP tests."""

from __future__ import annotations

from typing import Any

from agents.models import Agent
from escalations.models import Escalation
from escalations.services import escalation_open


def open_escalation(
    agent: Agent,
    *,
    server: str = "fs",
    tool: str = "write_file",
    arguments: dict[str, Any] | None = None,
    resource: str = "/srv/report.txt",
    risk_tier: str = "low",
    request_id: str = "req-1",
) -> Escalation:
    """A new pending escalation (fails if the call attached to an existing one instead)."""
    escalation, created = escalation_open(
        agent_id=agent.pk,
        server=server,
        tool=tool,
        action="write",
        resource=resource,
        arguments={"path": resource, "content": "hello"} if arguments is None else arguments,
        policy_id="hold-writes",
        reason="A human checks writes.",
        risk_tier=risk_tier,
        request_id=request_id,
        session="sess-1",
    )
    assert created, f"attached to escalation {escalation.pk} instead of opening one"
    return escalation
