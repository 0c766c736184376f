from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone


class AgentStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    SUSPENDED = "suspended", "Suspended"


class RiskTier(models.TextChoices):
    LOW = "low", "Low"
    MEDIUM = "medium", "Medium"
    HIGH = "high", "High"
    CRITICAL = "critical", "Critical"


class Role(models.Model):
    """A named group of agents that policies can target (for example `support-bots`).

    Agent roles are about what an agent is for; they are unrelated to people's console roles.
    """

    name = models.SlugField(max_length=64, unique=True)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Agent(models.Model):
    """An AI agent that reaches its tools through Behavry.

    An agent authenticates with one of its `AgentToken`s. A suspended agent is refused on its next
    request and all its sessions are ended. `risk_score`/`risk_tier` are written by the risk job and
    set how long its escalations may wait; `max_hold_seconds` caps how long one HTTP request is held
    for clients that give up early (TypeScript SDK clients stop at 60 s).
    """

    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    owner = models.CharField(max_length=200, blank=True, help_text="Team or person accountable for it.")
    status = models.CharField(max_length=16, choices=AgentStatus.choices, default=AgentStatus.ACTIVE)
    roles = models.ManyToManyField(Role, blank=True, related_name="agents")
    risk_score = models.FloatField(default=0.0)
    risk_tier = models.CharField(max_length=16, choices=RiskTier.choices, default=RiskTier.LOW)
    max_hold_seconds = models.PositiveIntegerField(
        default=50, help_text="Longest time one held request stays open before 'approval pending'."
    )
    suspended_at = models.DateTimeField(null=True, blank=True, editable=False)
    suspended_reason = models.TextField(blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(risk_score__gte=0) & Q(risk_score__lte=100), name="agents_agent_risk_score_0_100"
            ),
            models.CheckConstraint(
                condition=Q(max_hold_seconds__gte=1) & Q(max_hold_seconds__lte=86400),
                name="agents_agent_max_hold_1s_to_1d",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_active(self) -> bool:
        return self.status == AgentStatus.ACTIVE


class AgentToken(models.Model):
    """A bearer token an agent presents on `/mcp/…`.

    The raw token is shown once; only its SHA-256 digest is kept. Revoking takes effect on the
    agent's next request.
    """

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="tokens")
    label = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=32, help_text="First characters of the token, safe to display.")
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["-created_at", "-id"], name="agents_token_recent")]  # the default list order

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.label or 'token'})"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None


class SessionEra(models.TextChoices):
    LEGACY = "legacy", "Legacy (2025-06-18 / 2025-11-25, initialize + Mcp-Session-Id)"
    MODERN = "modern", "Modern (2026-07-28, stateless)"


class AgentSession(models.Model):
    """One MCP session between an agent and Behavry for one upstream server.

    Behavry issues its own session id and maps it to the upstream's, so any proxy process can serve
    any request. Ending a session (suspension, DELETE, upstream loss, idle expiry, eviction past
    the per-agent cap) sets `ended_at`; an ended id is answered with 404 so the client
    re-initializes. `last_seen_at` follows use, at most SESSION_TOUCH_SECONDS behind.
    """

    id = models.CharField(primary_key=True, max_length=64, editable=False)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="sessions")
    server = models.ForeignKey("proxy.UpstreamServer", on_delete=models.CASCADE, related_name="sessions")
    era = models.CharField(max_length=8, choices=SessionEra.choices, default=SessionEra.LEGACY)
    protocol_version = models.CharField(max_length=32, blank=True)
    upstream_session_id = models.CharField(max_length=200, blank=True)
    upstream_protocol_version = models.CharField(max_length=32, blank=True)
    client_info = models.JSONField(default=dict, blank=True, help_text="The agent's clientInfo and capabilities.")
    upstream_info = models.JSONField(
        default=dict, blank=True, help_text="The upstream's capabilities and instructions."
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_seen_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["-created_at", "-id"], name="agents_session_recent"),  # the default list order
            models.Index(fields=["agent", "ended_at"], name="agents_session_agent_open"),
            # The idle-expiry job's scan: open sessions by staleness, never the ended ones piling up.
            models.Index(fields=["last_seen_at"], condition=Q(ended_at__isnull=True), name="agents_session_open_seen"),
        ]

    def __str__(self) -> str:
        return f"{self.agent} @ {self.server_id} ({self.id[:8]}…)"

    @property
    def is_open(self) -> bool:
        return self.ended_at is None
