from __future__ import annotations

from policies.engine import PolicyEngine, build_engine
from policies.models import Policy, PolicyException, PolicyState

POLICY_FIELDS = (
    "id",
    "slug",
    "name",
    "priority",
    "enabled",
    "mode",
    "effect",
    "reason",
    "agents",
    "roles",
    "servers",
    "tools",
    "actions",
    "resources",
    "risk_tiers",
    "conditions",
    "time_window",
)


def policy_version() -> int:
    return PolicyState.objects.values_list("version", flat=True).filter(pk=1).first() or 0


def policy_engine_load(version: int) -> PolicyEngine:
    policies = Policy.objects.filter(enabled=True).values(*POLICY_FIELDS)
    exceptions = PolicyException.objects.filter(revoked_at__isnull=True).only(
        "id", "agent_id", "server", "tool", "resource", "expires_at", "revoked_at"
    )
    return build_engine(policies, exceptions, version)
