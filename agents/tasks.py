"""Celery adapters for agents: the idle-session expiry and the retention of ended sessions."""

from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from agents.services import SESSION_EXPIRY_BATCH, agent_session_expire_idle, agent_session_purge_ended
from proxy.sessions import end_upstream_blocking

# Batches per run (each its own transaction, then its upstream DELETEs): a backlog larger than this
# is finished by the next runs, so one run stays short.
EXPIRY_BATCHES_PER_RUN = 20


@shared_task(name="agents.tasks.expire_idle_sessions", ignore_result=True)
def expire_idle_sessions() -> int:
    """End sessions idle past BEHAVRY_MCP_SESSION_IDLE_SECONDS, then DELETE the upstream sessions
    behind them (best effort). Returns how many sessions it ended."""
    ended_total = 0
    for _batch in range(EXPIRY_BATCHES_PER_RUN):
        ended = agent_session_expire_idle(limit=SESSION_EXPIRY_BATCH)
        end_upstream_blocking(ended)
        ended_total += len(ended)
        if len(ended) < SESSION_EXPIRY_BATCH:
            break
    return ended_total


# Deletes per run of the retention job; a larger backlog (the first run after an upgrade) is
# finished by the next hourly runs.
PURGE_BATCHES_PER_RUN = 200


@shared_task(name="agents.tasks.purge_ended_sessions", ignore_result=True)
def purge_ended_sessions() -> int:
    """Delete sessions that ended more than BEHAVRY_MCP_SESSION_RETENTION_DAYS ago. Returns how many."""
    before = timezone.now() - timedelta(days=settings.BEHAVRY_MCP_SESSION_RETENTION_DAYS)
    deleted = 0
    for _batch in range(PURGE_BATCHES_PER_RUN):
        done = agent_session_purge_ended(before=before, limit=SESSION_EXPIRY_BATCH)
        deleted += done
        if done < SESSION_EXPIRY_BATCH:
            break
    return deleted
