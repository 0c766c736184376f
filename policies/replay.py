"""Replay: how would a draft rule set have decided the last N recorded calls?"""

from __future__ import annotations

from collections import Counter
from typing import Any

from audit.models import AuditEvent, AuditKind
from behavry.errors import InvalidInput
from policies.engine import CallContext, build_engine
from policies.models import Policy, PolicyException
from policies.selectors import POLICY_FIELDS
from policies.validation import validate_policy

MAX_LISTED_CHANGES = 200
REPLAYABLE = ("allow", "deny", "escalate")


def policy_replay(*, policies: list[dict[str, Any]], limit: int = 500, mode: str = "replace") -> dict[str, Any]:
    """Evaluate drafts against the last `limit` policy decisions and report which would change.

    Arguments in the audit trail are redacted, so a condition on a redacted argument sees
    "[redacted]" here; the response says how many replayed events had redactions.
    """
    drafts: list[dict[str, Any]] = []
    errors: dict[str, list[str]] = {}
    for index, body in enumerate(policies):
        try:
            cleaned = validate_policy(body)
        except InvalidInput as exc:
            for key, messages in exc.fields.items():
                errors[f"policies[{index}].{key}"] = messages
            continue
        drafts.append({**cleaned, "id": -(index + 1), "slug": f"draft-{index + 1}"})
    if errors:
        raise InvalidInput("A draft policy has invalid fields.", fields=errors)
    rules = drafts
    if mode == "add":
        rules = list(Policy.objects.filter(enabled=True).values(*POLICY_FIELDS)) + drafts
    engine = build_engine(rules, PolicyException.objects.filter(revoked_at__isnull=True))

    events = (
        AuditEvent.objects.filter(kind=AuditKind.DECISION, decision__in=REPLAYABLE)
        .exclude(policy_id__startswith="system.")
        .exclude(policy_id__startswith="dlp.")
        .exclude(policy_id__startswith="baseline.")
        .exclude(policy_id__startswith="escalation.")
        .order_by("-id")
        .values(
            "id",
            "timestamp",
            "agent_id",
            "agent_name",
            "server",
            "tool",
            "action",
            "resource",
            "arguments",
            "decision",
            "policy_id",
            "details",
        )[:limit]
    )
    transitions: Counter[str] = Counter()
    changes: list[dict[str, Any]] = []
    evaluated = redacted = 0
    for event in events:
        details: dict[str, Any] = event["details"] if isinstance(event["details"], dict) else {}
        ctx = CallContext(
            agent_id=event["agent_id"],
            server=event["server"],
            tool=event["tool"],
            action=event["action"] or "other",
            resource=event["resource"],
            arguments=event["arguments"] if isinstance(event["arguments"], dict) else {},
            roles=frozenset(details.get("roles") or ()),
            risk_tier=details.get("risk_tier") or "low",
            now=event["timestamp"],
        )
        if "[redacted" in str(event["arguments"]):
            redacted += 1
        after = engine.decide(ctx)
        evaluated += 1
        if after.decision != event["decision"]:
            transitions[f"{event['decision']}->{after.decision}"] += 1
            if len(changes) < MAX_LISTED_CHANGES:
                changes.append(
                    {
                        "event_id": event["id"],
                        "timestamp": event["timestamp"],
                        "agent": event["agent_id"],
                        "agent_name": event["agent_name"],
                        "server": event["server"],
                        "tool": event["tool"],
                        "resource": event["resource"],
                        "before": {"decision": event["decision"], "policy_id": event["policy_id"]},
                        "after": {"decision": after.decision, "policy_id": after.policy_id},
                    }
                )
    return {
        "evaluated": evaluated,
        "changed": sum(transitions.values()),
        "transitions": dict(transitions),
        "changes": changes,
        "events_with_redacted_arguments": redacted,
        "mode": mode,
    }
