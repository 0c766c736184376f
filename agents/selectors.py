from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from agents.models import AgentToken
from behavry.tokens import AGENT_TOKEN_KIND, secret_digest

LAST_USED_GRANULARITY = timedelta(seconds=60)


def agent_token_authenticate(raw: str) -> AgentToken | None:
    """The unrevoked token matching `raw`, with its agent loaded, or None.

    The caller decides what a suspended agent means (403 on /mcp/); this only proves identity.
    """
    if not raw.startswith(AGENT_TOKEN_KIND):
        return None
    token = (
        AgentToken.objects.select_related("agent")
        .filter(token_hash=secret_digest(raw), revoked_at__isnull=True)
        .first()
    )
    if token is None:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_GRANULARITY:
        AgentToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token
