from __future__ import annotations

from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone


class UpstreamEra(models.TextChoices):
    UNKNOWN = "unknown", "Not yet detected"
    LEGACY = "legacy", "Legacy (initialize + sessions)"
    MODERN = "modern", "Modern (2026-07-28, stateless)"


class ToolAction(models.TextChoices):
    """Verb classes policies match on, ordered here from least to most dangerous."""

    READ = "read", "Read"
    OTHER = "other", "Other"
    WRITE = "write", "Write"
    SEND = "send", "Send"
    EXECUTE = "execute", "Execute"
    DELETE = "delete", "Delete"


class UpstreamServer(models.Model):
    """An MCP server (Streamable HTTP) that agents reach through `/mcp/<slug>`.

    `auth_header_*` are Behavry's own credentials for this upstream. They are sent upstream in place
    of the agent's token, which is never forwarded. They are write-only in the API and admin lists.
    """

    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    url = models.URLField(max_length=500, help_text="Streamable HTTP endpoint, e.g. http://127.0.0.1:8765/mcp")
    auth_header_name = models.CharField(max_length=100, default="Authorization", blank=True)
    auth_header_value = models.CharField(max_length=2000, blank=True)
    enabled = models.BooleanField(default=True)
    connect_timeout = models.FloatField(default=5.0, validators=[MinValueValidator(0.1)])
    read_timeout = models.FloatField(default=300.0, validators=[MinValueValidator(0.1)])
    era = models.CharField(max_length=8, choices=UpstreamEra.choices, default=UpstreamEra.UNKNOWN, editable=False)
    protocol_version = models.CharField(max_length=32, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug

    @property
    def has_credentials(self) -> bool:
        return bool(self.auth_header_value)


class Tool(models.Model):
    """A tool an upstream server offers, as last seen in its `tools/list`.

    `definition_hash` covers everything the agent's model reads (name, description, schemas,
    annotations), so a silently changed definition is detectable. `default_action` is derived from
    the name and annotations (annotations are untrusted hints, so they can only make a tool look
    more dangerous, never less); `action_override` is an admin's correction and wins.
    `resource_argument` names the argument that holds the resource (path, URL, table, repo).
    """

    server = models.ForeignKey(UpstreamServer, on_delete=models.CASCADE, related_name="tools")
    name = models.CharField(max_length=128)
    title = models.CharField(max_length=200, blank=True)
    description = models.TextField(blank=True)
    input_schema = models.JSONField(default=dict, blank=True)
    annotations = models.JSONField(default=dict, blank=True)
    default_action = models.CharField(max_length=16, choices=ToolAction.choices, default=ToolAction.OTHER)
    action_override = models.CharField(max_length=16, choices=ToolAction.choices, blank=True)
    resource_argument = models.CharField(max_length=128, blank=True)
    definition_hash = models.CharField(max_length=64)
    first_seen_at = models.DateTimeField(default=timezone.now, editable=False)
    last_seen_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["server__slug", "name"]
        constraints = [models.UniqueConstraint(fields=["server", "name"], name="proxy_tool_unique_per_server")]

    def __str__(self) -> str:
        return f"{self.server.slug}/{self.name}"

    @property
    def action(self) -> str:
        return self.action_override or self.default_action


class CacheGeneration(models.Model):
    """One row whose number database triggers move whenever a row the proxy caches changes
    (agents, their tokens and roles, upstream servers, the tool catalog): each proxy process
    checks this one number instead of re-reading every cached row. See proxy/generation.py."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    generation = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"cache generation {self.generation}"
