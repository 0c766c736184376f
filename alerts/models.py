from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone


class AlertType(models.TextChoices):
    ANOMALY = "anomaly", "Behavioural anomaly"
    DLP_VIOLATION = "dlp_violation", "DLP violation"
    BASELINE_DRIFT = "baseline_drift", "Baseline drift"
    TOOL_CHANGED = "tool_changed", "Tool definition changed"
    INJECTION = "injection", "Prompt injection"
    RISK_TIER_CHANGE = "risk_tier_change", "Risk tier change"
    SYSTEM = "system", "System"


class AlertSeverity(models.TextChoices):
    INFO = "info", "Info"
    WARNING = "warning", "Warning"
    CRITICAL = "critical", "Critical"


class AlertStatus(models.TextChoices):
    OPEN = "open", "Open"
    ACKNOWLEDGED = "acknowledged", "Acknowledged"
    RESOLVED = "resolved", "Resolved"


class Alert(models.Model):
    """Something an admin should look at. Alerts never block a call.

    Repeats of the same condition share a `dedup_key`: while an alert with that key is unresolved,
    raising it again bumps `occurrences` instead of flooding the inbox (a named constraint keeps
    one unresolved alert per key). `false_positive` on resolve feeds threshold tuning.
    """

    agent = models.ForeignKey("agents.Agent", null=True, blank=True, on_delete=models.SET_NULL, related_name="alerts")
    type = models.CharField(max_length=32, choices=AlertType.choices)
    severity = models.CharField(max_length=16, choices=AlertSeverity.choices)
    status = models.CharField(max_length=16, choices=AlertStatus.choices, default=AlertStatus.OPEN)
    title = models.CharField(max_length=300)
    details = models.JSONField(default=dict, blank=True)
    dedup_key = models.CharField(max_length=300, blank=True)
    occurrences = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_seen_at = models.DateTimeField(default=timezone.now)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.CharField(max_length=200, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.CharField(max_length=200, blank=True)
    false_positive = models.BooleanField(default=False)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["-created_at", "-id"], name="alerts_recent"),  # the default list order
            models.Index(fields=["status", "severity", "-created_at"], name="alerts_inbox"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["dedup_key"],
                condition=~Q(status="resolved") & ~Q(dedup_key=""),
                name="alerts_one_unresolved_per_dedup_key",
            ),
        ]

    def __str__(self) -> str:
        return f"[{self.severity}] {self.title}"


class AlertNote(models.Model):
    """A note an admin left on an alert when acknowledging or resolving it."""

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="notes")
    author = models.CharField(max_length=200)
    action = models.CharField(max_length=16, blank=True)  # "acknowledge" | "resolve" | ""
    text = models.TextField()
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"{self.author}: {self.text[:40]}"
