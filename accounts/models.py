from __future__ import annotations

from django.db import models
from django.utils import timezone

from accounts.roles import PersonRole


class ApiKey(models.Model):
    """A credential for an integration calling the REST API.

    The raw key is shown once at creation; only its SHA-256 digest is stored (see behavry.tokens).
    A key acts with exactly one role. Agent tokens are a different table and a different prefix,
    and neither works where the other belongs.
    """

    name = models.CharField(max_length=100)
    role = models.CharField(max_length=16, choices=PersonRole.choices)
    prefix = models.CharField(max_length=32, help_text="First characters of the key, safe to display.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    created_by = models.CharField(max_length=200, blank=True, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def is_usable(self, now=None) -> bool:
        now = now or timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)
