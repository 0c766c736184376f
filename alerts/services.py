"""Raising and handling alerts. Detection code elsewhere calls `alert_raise` and nothing else."""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from agents.models import Agent
from alerts.models import Alert, AlertNote, AlertSeverity, AlertStatus, AlertType
from audit.services import audit_admin
from behavry.actors import Actor
from behavry.errors import Conflict, InvalidInput


def alert_raise(
    *,
    type: str,
    severity: str,
    title: str,
    agent: Agent | None = None,
    details: dict[str, Any] | None = None,
    dedup_key: str = "",
) -> Alert:
    """Open an alert, or count one more occurrence of an unresolved alert with the same key.

    DLP violations are always critical, whatever the caller asked for (product rule).
    Concurrent raises of one key are safe: the partial unique constraint lets exactly one INSERT
    win, and the loser retries as an increment.
    """
    if type not in AlertType.values:
        raise InvalidInput(f"Unknown alert type {type!r}.", fields={"type": ["Unknown alert type."]})
    if severity not in AlertSeverity.values:
        raise InvalidInput(f"Unknown severity {severity!r}.", fields={"severity": ["Unknown severity."]})
    if type == AlertType.DLP_VIOLATION:
        severity = AlertSeverity.CRITICAL
    now = timezone.now()
    for _attempt in range(3):
        with transaction.atomic():
            if dedup_key:
                bumped = (
                    Alert.objects.filter(dedup_key=dedup_key)
                    .exclude(status=AlertStatus.RESOLVED)
                    .update(occurrences=F("occurrences") + 1, last_seen_at=now)
                )
                if bumped:
                    return Alert.objects.exclude(status=AlertStatus.RESOLVED).get(dedup_key=dedup_key)
            try:
                with transaction.atomic():
                    return Alert.objects.create(
                        agent=agent,
                        type=type,
                        severity=severity,
                        title=title[:300],
                        details=details or {},
                        dedup_key=dedup_key,
                        created_at=now,
                        last_seen_at=now,
                    )
            except IntegrityError:
                continue  # another process opened it between our UPDATE and INSERT
    raise RuntimeError(f"could not raise alert {dedup_key!r}")  # pragma: no cover - needs 3 lost races


@transaction.atomic
def alert_acknowledge(*, alert: Alert, by: Actor, note: str = "") -> Alert:
    """Mark an open alert as seen; it leaves the open inbox but stays unresolved."""
    now = timezone.now()
    changed = Alert.objects.filter(pk=alert.pk, status=AlertStatus.OPEN).update(
        status=AlertStatus.ACKNOWLEDGED, acknowledged_at=now, acknowledged_by=by.label
    )
    if not changed:
        raise Conflict(f"Alert {alert.pk} is not open.")
    if note.strip():
        AlertNote.objects.create(alert=alert, author=by.label, action="acknowledge", text=note.strip())
    alert.refresh_from_db()
    audit_admin(by=by, operation="alert.acknowledge", agent=alert.agent, target=f"alert:{alert.pk}", reason=note)
    return alert


@transaction.atomic
def alert_resolve(*, alert: Alert, by: Actor, note: str = "", false_positive: bool = False) -> Alert:
    now = timezone.now()
    changed = (
        Alert.objects.filter(pk=alert.pk)
        .exclude(status=AlertStatus.RESOLVED)
        .update(status=AlertStatus.RESOLVED, resolved_at=now, resolved_by=by.label, false_positive=false_positive)
    )
    if not changed:
        raise Conflict(f"Alert {alert.pk} is already resolved.")
    if note.strip():
        AlertNote.objects.create(alert=alert, author=by.label, action="resolve", text=note.strip())
    alert.refresh_from_db()
    audit_admin(
        by=by,
        operation="alert.resolve",
        agent=alert.agent,
        target=f"alert:{alert.pk}",
        reason=note,
        details={"false_positive": false_positive},
    )
    return alert
