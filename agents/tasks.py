"""Celery adapters for agents: the idle-session expiry."""

from __future__ import annotations

from celery import shared_task

from agents.services import SESSION_EXPIRY_BATCH, agent_session_expire_idle
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
