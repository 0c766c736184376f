from __future__ import annotations

from django.db import models
from django.db.models import Case, F, IntegerField, Q, Value, When
from django.utils import timezone


class EscalationStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    APPROVED = "approved", "Approved"
    DENIED = "denied", "Denied"
    EXPIRED = "expired", "Expired"
    CANCELLED = "cancelled", "Cancelled"


def _pending_last_key() -> Case:
    return Case(When(status="pending", then=Value(0)), default=Value(1), output_field=IntegerField())


def approver_queue_order() -> list:
    """Pending first, then newest first: the order approvers work in (admin, index below)."""
    return [_pending_last_key().asc(), F("created_at").desc(), F("id").desc()]


class Escalation(models.Model):
    """A tool call held for a human decision.

    `pending` moves to exactly one of approved / denied / expired / cancelled, each by a single
    conditional UPDATE in `escalations.services` (a second decision gets 409). The proxy process
    that holds the agent's request waits on the channel layer group `escalation.<id>` and re-reads
    this row at least every 2 s. `call_hash` identifies the exact call (agent, server, tool,
    canonical arguments) so an agent's retry attaches to the same escalation; a partial unique
    constraint keeps one pending escalation per call. `forwarded_at` is claimed once, so an
    approved call reaches the upstream exactly once. Arguments are stored redacted, for review;
    the call itself stays in the holding process's memory.
    """

    status = models.CharField(max_length=10, choices=EscalationStatus.choices, default=EscalationStatus.PENDING)
    agent = models.ForeignKey("agents.Agent", on_delete=models.CASCADE, related_name="escalations")
    server = models.CharField(max_length=64)
    tool = models.CharField(max_length=200)
    action = models.CharField(max_length=16, blank=True)
    resource = models.CharField(max_length=1000, blank=True)
    arguments = models.JSONField(default=dict, blank=True, help_text="Redacted arguments, for review.")
    call_hash = models.CharField(max_length=64)
    policy_id = models.CharField(max_length=200)
    reason = models.TextField(blank=True)
    risk_tier = models.CharField(max_length=16)
    request_id = models.CharField(max_length=100, blank=True, help_text="Audit request_id of the first call.")
    session = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    deadline = models.DateTimeField()
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.CharField(max_length=300, blank=True)
    note = models.TextField(blank=True)
    create_exception = models.BooleanField(default=False)
    exception_id = models.BigIntegerField(null=True, blank=True)
    forwarded_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "deadline"], name="escalations_status_deadline"),
            models.Index(fields=["call_hash", "-created_at"], name="escalations_call"),
            # Serves approver_queue_order() from the index instead of sorting the whole history.
            models.Index(_pending_last_key(), F("created_at").desc(), F("id").desc(), name="escalations_queue"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["call_hash"], condition=Q(status="pending"), name="escalations_one_pending_per_call"
            ),
            models.CheckConstraint(
                condition=Q(status="pending") | Q(decided_at__isnull=False), name="escalations_decided_has_time"
            ),
        ]

    def __str__(self) -> str:
        return f"escalation {self.pk} {self.status} {self.server}/{self.tool}"

    @property
    def is_pending(self) -> bool:
        return self.status == EscalationStatus.PENDING
