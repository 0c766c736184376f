"""Every change to policies and exceptions goes through here, bumps the policy version, and is audited."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.text import slugify

from agents.models import Agent
from audit.services import audit_admin
from behavry.actors import Actor
from behavry.errors import Conflict, InvalidInput
from policies.models import Policy, PolicyException, PolicyState
from policies.selectors import POLICY_FIELDS
from policies.validation import validate_policy

# Policy ids Behavry itself emits; a rule must not be able to impersonate them.
RESERVED_SLUGS = {"default-deny", "system-fail-closed", "baseline-tool-drift", "baseline-tool-changed", "dlp-block"}


def policy_version_bump() -> int:
    """Move the policy version so every process recompiles; call inside the change's transaction."""
    PolicyState.objects.get_or_create(pk=1)
    PolicyState.objects.filter(pk=1).update(version=F("version") + 1, changed_at=timezone.now())
    return PolicyState.objects.values_list("version", flat=True).get(pk=1)


def _slug_for(name: str, exclude_pk: int | None = None) -> str:
    base = slugify(name)[:180] or "policy"
    if base in RESERVED_SLUGS:
        base = f"rule-{base}"
    slug, n = base, 2
    others = Policy.objects.exclude(pk=exclude_pk) if exclude_pk is not None else Policy.objects.all()
    while others.filter(slug=slug).exists():
        slug, n = f"{base}-{n}", n + 1
    return slug


def policy_snapshot(policy: Policy) -> dict[str, Any]:
    return {f: getattr(policy, f) for f in POLICY_FIELDS}


@transaction.atomic
def policy_create(*, data: dict[str, Any], by: Actor) -> Policy:
    cleaned = validate_policy(data)
    if Policy.objects.filter(name=cleaned["name"]).exists():
        raise InvalidInput("A policy with this name exists.", fields={"name": ["Already taken."]})
    policy = Policy(**cleaned, slug=_slug_for(cleaned["name"]), created_by=by.label, updated_by=by.label)
    try:
        with transaction.atomic():
            policy.save()
    except IntegrityError:
        raise InvalidInput("A policy with this name exists.", fields={"name": ["Already taken."]}) from None
    policy_version_bump()
    audit_admin(by=by, operation="policy.create", target=f"policy:{policy.slug}", details=policy_snapshot(policy))
    return policy


@transaction.atomic
def policy_update(*, policy: Policy, data: dict[str, Any], by: Actor, partial: bool = False) -> Policy:
    """Replace (or with `partial`, patch) a rule. The slug - its policy_id - never changes."""
    before = policy_snapshot(policy)
    existing = {k: v for k, v in before.items() if k not in ("id", "slug")}
    cleaned = validate_policy(data, partial=partial, existing=existing)
    if Policy.objects.filter(name=cleaned["name"]).exclude(pk=policy.pk).exists():
        raise InvalidInput("A policy with this name exists.", fields={"name": ["Already taken."]})
    for key, value in cleaned.items():
        setattr(policy, key, value)
    policy.updated_by = by.label
    policy.save()
    policy_version_bump()
    after = policy_snapshot(policy)
    changes = {k: {"from": before[k], "to": after[k]} for k in after if before[k] != after[k]}
    audit_admin(by=by, operation="policy.update", target=f"policy:{policy.slug}", details={"changes": changes})
    return policy


@transaction.atomic
def policy_delete(*, policy: Policy, by: Actor) -> None:
    snapshot = policy_snapshot(policy)
    policy.delete()
    policy_version_bump()
    audit_admin(by=by, operation="policy.delete", target=f"policy:{snapshot['slug']}", details=snapshot)


@transaction.atomic
def policy_set_enabled(*, policy: Policy, enabled: bool, by: Actor) -> Policy:
    """Switch a rule on or off without re-validating it: a rule naming a since-deleted role or
    agent must still be disable-able."""
    if policy.enabled == enabled:
        return policy
    policy.enabled = enabled
    policy.updated_by = by.label
    policy.save(update_fields=["enabled", "updated_by", "updated_at"])
    policy_version_bump()
    audit_admin(
        by=by,
        operation="policy.update",
        target=f"policy:{policy.slug}",
        details={"changes": {"enabled": {"from": not enabled, "to": enabled}}},
    )
    return policy


@transaction.atomic
def exception_create(
    *,
    agent: Agent,
    server: str,
    tool: str,
    resource: str = "",
    by: Actor,
    note: str = "",
    expires_at: datetime | None = None,
    escalation_id: int | None = None,
) -> PolicyException:
    """Allow this exact (agent, server, tool, resource) without review. Never overrides a deny."""
    errors: dict[str, list[str]] = {}
    for key, value in (("server", server), ("tool", tool)):
        if not isinstance(value, str) or not value.strip():
            errors[key] = ["This field is required."]
    if not isinstance(resource, str) or len(resource) > 1000:
        errors["resource"] = ["Must be a string of at most 1000 characters."]
    if expires_at is not None and expires_at <= timezone.now():
        errors["expires_at"] = ["Must be in the future."]
    if errors:
        raise InvalidInput("The exception has invalid fields.", fields=errors)
    # An expired exception is inactive but not revoked; retire it so a new one can take its place.
    PolicyException.objects.filter(
        agent=agent,
        server=server.strip(),
        tool=tool.strip(),
        resource=resource,
        revoked_at__isnull=True,
        expires_at__lte=timezone.now(),
    ).update(revoked_at=timezone.now(), revoked_by="system:behavry (expired)")
    try:
        with transaction.atomic():
            exception = PolicyException.objects.create(
                agent=agent,
                server=server.strip(),
                tool=tool.strip(),
                resource=resource,
                note=note or "",
                expires_at=expires_at,
                escalation_id=escalation_id,
                created_by=by.label,
            )
    except IntegrityError:
        raise Conflict("An active exception for this exact call exists.") from None
    policy_version_bump()
    audit_admin(
        by=by,
        operation="exception.create",
        agent=agent,
        target=f"exception:{exception.pk}",
        reason=note,
        details={
            "server": exception.server,
            "tool": exception.tool,
            "resource": exception.resource,
            "expires_at": expires_at,
            "escalation_id": escalation_id,
        },
    )
    return exception


@transaction.atomic
def exception_revoke(*, exception: PolicyException, by: Actor) -> PolicyException:
    changed = PolicyException.objects.filter(pk=exception.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now(), revoked_by=by.label
    )
    if not changed:
        raise Conflict(f"Exception {exception.pk} is already revoked.")
    exception.refresh_from_db()
    policy_version_bump()
    audit_admin(by=by, operation="exception.revoke", agent=exception.agent, target=f"exception:{exception.pk}")
    return exception
