"""The escalation state machine. Every transition is one conditional UPDATE plus an audit event.

pending -> approved | denied | expired | cancelled. A transition on a row that is no longer
pending changes nothing and raises Conflict (409 in the API).
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from agents.models import Agent
from audit.chain import canonical_json
from audit.redaction import redact_arguments
from audit.services import audit_admin, audit_record
from behavry.actors import SYSTEM, Actor
from behavry.errors import Conflict
from escalations.models import Escalation, EscalationStatus
from escalations.notify import notify
from policies.models import PolicyException
from policies.services import exception_create

# A retry of a call whose escalation was denied or expired this recently gets that answer at once.
DECIDED_REPLAY = timedelta(minutes=10)


def call_hash(*, agent_id: int, server: str, tool: str, arguments: dict[str, Any]) -> str:
    """Identity of "the same call" for retries: agent, server, tool and canonical arguments."""
    text = canonical_json({"agent": agent_id, "server": server, "tool": tool, "arguments": arguments})
    return hashlib.sha256(text.encode()).hexdigest()


def escalation_timeout(risk_tier: str) -> timedelta:
    return timedelta(
        seconds=settings.BEHAVRY_ESCALATION_TIMEOUTS.get(risk_tier, settings.BEHAVRY_ESCALATION_TIMEOUTS["low"])
    )


def escalation_open(
    *,
    agent_id: int,
    server: str,
    tool: str,
    action: str,
    resource: str,
    arguments: dict[str, Any],
    policy_id: str,
    reason: str,
    risk_tier: str,
    request_id: str = "",
    session: str = "",
) -> tuple[Escalation, bool]:
    """The escalation this call waits on: an existing one for the same call, or a new one.

    Returns (escalation, created). An existing one is pending, approved but not yet forwarded, or
    denied/expired within DECIDED_REPLAY: a retry then waits again or gets its answer at once.
    """
    digest = call_hash(agent_id=agent_id, server=server, tool=tool, arguments=arguments)
    existing = _attachable(digest)
    if existing is not None:
        return existing, False
    now = timezone.now()
    try:
        with transaction.atomic():
            escalation = Escalation.objects.create(
                agent_id=agent_id,
                server=server,
                tool=tool,
                action=action,
                resource=resource,
                arguments=redact_arguments(arguments),
                call_hash=digest,
                policy_id=policy_id,
                reason=reason,
                risk_tier=risk_tier,
                request_id=request_id,
                session=session,
                created_at=now,
                deadline=now + escalation_timeout(risk_tier),
            )
    except IntegrityError:
        # An identical call opened one a moment ago: attach to it.
        existing = _attachable(digest)
        if existing is None:
            raise
        return existing, False
    transaction.on_commit(lambda: notify("created", escalation))
    return escalation, True


def _attachable(digest: str) -> Escalation | None:
    latest = Escalation.objects.filter(call_hash=digest).order_by("-created_at").first()
    if latest is None:
        return None
    if latest.status == EscalationStatus.PENDING:
        return latest
    if latest.status == EscalationStatus.APPROVED and latest.forwarded_at is None and timezone.now() < latest.deadline:
        return latest  # an approval stays usable by a retry until the escalation's deadline
    recently_decided = latest.decided_at is not None and timezone.now() - latest.decided_at < DECIDED_REPLAY
    if latest.status in (EscalationStatus.DENIED, EscalationStatus.EXPIRED) and recently_decided:
        return latest
    return None


def _transition(escalation: Escalation, status: str, **fields: Any) -> Escalation:
    now = timezone.now()
    changed = Escalation.objects.filter(pk=escalation.pk, status=EscalationStatus.PENDING).update(
        status=status, decided_at=now, **fields
    )
    if not changed:
        current = Escalation.objects.filter(pk=escalation.pk).values_list("status", flat=True).first()
        raise Conflict(f"Escalation {escalation.pk} is already {current}.")
    escalation.refresh_from_db()
    return escalation


def _active_exception(escalation: Escalation) -> PolicyException | None:
    now = timezone.now()
    return (
        PolicyException.objects.filter(
            agent_id=escalation.agent_id,
            server=escalation.server,
            tool=escalation.tool,
            resource=escalation.resource,
            revoked_at__isnull=True,
        )
        .exclude(expires_at__lte=now)
        .first()
    )


@transaction.atomic
def escalation_approve(
    *, escalation: Escalation, by: Actor, note: str = "", create_exception: bool = False
) -> Escalation:
    escalation = _transition(
        escalation, EscalationStatus.APPROVED, decided_by=by.label, note=note or "", create_exception=create_exception
    )
    if create_exception:
        # Two held calls can differ only in arguments; the second approval reuses the exception.
        exception = _active_exception(escalation) or exception_create(
            agent=escalation.agent,
            server=escalation.server,
            tool=escalation.tool,
            resource=escalation.resource,
            note=note or f"from escalation {escalation.pk}",
            escalation_id=escalation.pk,
            by=by,
        )
        Escalation.objects.filter(pk=escalation.pk).update(exception_id=exception.pk)
        escalation.exception_id = exception.pk
    audit_admin(
        by=by,
        operation="escalation.approve",
        agent=escalation.agent,
        target=f"escalation:{escalation.pk}",
        reason=note,
        details={"tool": escalation.tool, "server": escalation.server, "create_exception": create_exception},
    )
    transaction.on_commit(lambda: notify("approved", escalation))
    return escalation


@transaction.atomic
def escalation_deny(*, escalation: Escalation, by: Actor, note: str = "") -> Escalation:
    escalation = _transition(escalation, EscalationStatus.DENIED, decided_by=by.label, note=note or "")
    audit_admin(
        by=by,
        operation="escalation.deny",
        agent=escalation.agent,
        target=f"escalation:{escalation.pk}",
        reason=note,
        details={"tool": escalation.tool, "server": escalation.server},
    )
    transaction.on_commit(lambda: notify("denied", escalation))
    return escalation


def _system_transition(escalation: Escalation, status: str, policy_id: str, reason: str) -> Escalation:
    """Expiry and cancellation are decisions on the agent's call, recorded on its chain."""
    escalation = _transition(escalation, status, decided_by=SYSTEM.label, note=reason)
    agent = Agent.objects.only("id", "name").get(pk=escalation.agent_id)
    audit_record(
        kind="decision",
        actor=SYSTEM,
        agent=agent,
        session=escalation.session,
        server=escalation.server,
        tool=escalation.tool,
        action=escalation.action,
        resource=escalation.resource,
        decision="deny",
        policy_id=policy_id,
        reason=reason,
        request_id=escalation.request_id,
        details={"escalation_id": escalation.pk, "status": status},
    )
    transaction.on_commit(lambda: notify(status, escalation))
    return escalation


@transaction.atomic
def escalation_expire(*, escalation: Escalation) -> Escalation:
    return _system_transition(
        escalation, EscalationStatus.EXPIRED, "escalation.expired", "No decision before the deadline; denied."
    )


@transaction.atomic
def escalation_cancel(*, escalation: Escalation, reason: str) -> Escalation:
    return _system_transition(escalation, EscalationStatus.CANCELLED, "escalation.cancelled", reason)


def escalation_claim_forward(*, escalation_id: int) -> bool:
    """Claim the one forward of an approved call. True for exactly one caller."""
    return bool(
        Escalation.objects.filter(pk=escalation_id, status=EscalationStatus.APPROVED, forwarded_at__isnull=True).update(
            forwarded_at=timezone.now()
        )
    )


def escalation_sweep(*, now=None) -> int:
    """Expire pending escalations past their deadline whose waiter did not (it died or left).

    Each row is claimed by the conditional UPDATE inside escalation_expire, so two overlapping
    sweeps (or a sweep racing the waiter) expire each escalation once.
    """
    now = now or timezone.now()
    expired = 0
    for escalation in Escalation.objects.filter(status=EscalationStatus.PENDING, deadline__lte=now)[:1000]:
        try:
            escalation_expire(escalation=escalation)
            expired += 1
        except Conflict:
            continue
    return expired


def escalation_cancel_for_agent(*, agent: Agent, reason: str) -> int:
    """Cancel every pending escalation of an agent (suspension). Returns how many."""
    cancelled = 0
    for escalation in Escalation.objects.filter(agent=agent, status=EscalationStatus.PENDING):
        try:
            escalation_cancel(escalation=escalation, reason=reason)
            cancelled += 1
        except Conflict:
            continue
    return cancelled
