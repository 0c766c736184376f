from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone


class PolicyEffect(models.TextChoices):
    ALLOW = "allow", "Allow"
    DENY = "deny", "Deny"
    ESCALATE = "escalate", "Escalate (hold for a human)"


class PolicyMode(models.TextChoices):
    ENFORCE = "enforce", "Enforce"
    SHADOW = "shadow", "Shadow (log what it would have done)"


class Policy(models.Model):
    """One allow/deny/escalate rule.

    Every matcher is a list; an empty list matches anything. `agents` holds agent ids and `roles`
    agent role names; a rule that names either matches an agent that is listed *or* holds one of the
    roles. `servers`, `tools` and `resources` are case-sensitive globs (`*`, `?`, `[abc]`).
    `conditions` are `{"arg", "op", "value"}` on the call's arguments, where `arg` may be a dotted
    path; all must hold. `time_window` limits the rule to days and hours in a time zone.
    Combining (Cedar/IAM style) is in `policies.engine`. The rule's `slug` is the `policy_id` that
    decisions and audit events carry.
    """

    name = models.CharField(max_length=200, unique=True)
    slug = models.SlugField(max_length=200, unique=True, editable=False)
    priority = models.IntegerField(default=100, help_text="Higher first; breaks ties among rules of one effect.")
    enabled = models.BooleanField(default=True)
    mode = models.CharField(max_length=8, choices=PolicyMode.choices, default=PolicyMode.ENFORCE)
    effect = models.CharField(max_length=8, choices=PolicyEffect.choices)
    reason = models.TextField(blank=True, help_text="Shown to the agent and to admins.")
    agents = models.JSONField(default=list, blank=True)
    roles = models.JSONField(default=list, blank=True)
    servers = models.JSONField(default=list, blank=True)
    tools = models.JSONField(default=list, blank=True)
    actions = models.JSONField(default=list, blank=True)
    resources = models.JSONField(default=list, blank=True)
    risk_tiers = models.JSONField(default=list, blank=True)
    conditions = models.JSONField(default=list, blank=True)
    time_window = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)
    created_by = models.CharField(max_length=300, blank=True, editable=False)
    updated_by = models.CharField(max_length=300, blank=True, editable=False)

    class Meta:
        ordering = ["-priority", "id"]
        verbose_name_plural = "policies"

    def __str__(self) -> str:
        return f"{self.slug} ({self.effect}{', shadow' if self.mode == PolicyMode.SHADOW else ''})"


class PolicyException(models.Model):
    """An exact (agent, server, tool, resource) an admin allowed without review.

    It only turns a matching *escalate* into allow; a matching deny rule still denies. Usually
    created when approving an escalation, or directly by an admin. Revoked rather than deleted, so
    the record of who allowed what stays.
    """

    agent = models.ForeignKey("agents.Agent", on_delete=models.CASCADE, related_name="policy_exceptions")
    server = models.CharField(max_length=64)
    tool = models.CharField(max_length=200)
    resource = models.CharField(max_length=1000, blank=True, help_text="Exact resource; empty matches calls with none.")
    note = models.TextField(blank=True)
    escalation_id = models.BigIntegerField(null=True, blank=True, help_text="The escalation it was created from.")
    expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    created_by = models.CharField(max_length=300, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_by = models.CharField(max_length=300, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        # The default list order.
        indexes = [models.Index(fields=["-created_at", "-id"], name="policies_exception_recent")]
        constraints = [
            models.UniqueConstraint(
                fields=["agent", "server", "tool", "resource"],
                condition=Q(revoked_at__isnull=True),
                name="policies_one_active_exception_per_call",
            )
        ]

    def __str__(self) -> str:
        return f"{self.agent_id}:{self.server}/{self.tool} {self.resource}"

    def is_active(self, now=None) -> bool:
        now = now or timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class PolicyState(models.Model):
    """A single row whose `version` goes up with every policy or exception change.

    Each proxy process compares it with the version its compiled rule index was built from (at
    most every half second), so a change is enforced everywhere within a second without reloading
    the rules on every call.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    version = models.PositiveBigIntegerField(default=0)
    changed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(id=1), name="policies_state_single_row")]

    def __str__(self) -> str:
        return f"policy version {self.version}"
