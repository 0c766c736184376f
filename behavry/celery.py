"""Celery application and the one beat schedule.

Every periodic job is listed here with why it runs at its interval. Tasks are adapters: they take
ids and call a service, so a job's logic is testable without Celery.
"""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "behavry.settings")

app = Celery("behavry")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# Project-level tasks (the heartbeat) live outside the apps, so autodiscovery does not see them.
app.conf.imports = ("behavry.tasks",)

# Later issues add: risk recompute (60 s), escalation sweep (30 s), anomaly detection.
app.conf.beat_schedule = {
    # Heartbeat so /readyz can tell that beat and a worker are both alive.
    "behavry-heartbeat": {"task": "behavry.tasks.heartbeat", "schedule": 30.0},
    # Expire held calls whose waiter died before their deadline (crash, restart). The waiter enforces
    # deadlines itself, so 30 s only bounds how long an orphan can look pending.
    "escalation-sweep": {"task": "escalations.tasks.sweep", "schedule": 30.0},
    # Audit retention: hourly is plenty for a day-granular policy, and keeps each run's deletes small.
    "audit-retention": {"task": "audit.tasks.apply_retention", "schedule": 3600.0},
    # End MCP sessions idle past BEHAVRY_MCP_SESSION_IDLE_SECONDS (at least 60) and DELETE their
    # upstream sessions. Every 60 s: a session ends within a minute of qualifying, whatever the limit,
    # and a run with nothing idle is one query on a partial index of open sessions.
    "session-expiry": {"task": "agents.tasks.expire_idle_sessions", "schedule": 60.0},
    # Delete sessions ended past BEHAVRY_MCP_SESSION_RETENTION_DAYS: day-granular, so hourly, as
    # the audit retention.
    "session-retention": {"task": "agents.tasks.purge_ended_sessions", "schedule": 3600.0},
}


@worker_ready.connect
def _heartbeat_on_start(sender=None, **kwargs) -> None:
    # /readyz should not report "no worker" for the first 30 s after start-up.
    from behavry.tasks import heartbeat

    heartbeat()
