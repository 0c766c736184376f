"""Project-level Celery tasks."""

from __future__ import annotations

import time

from celery import shared_task
from django.core.cache import cache

HEARTBEAT_CACHE_KEY = "behavry:celery:heartbeat"


@shared_task(name="behavry.tasks.heartbeat", ignore_result=True)
def heartbeat() -> float:
    """Record that a worker ran a beat-scheduled task; /readyz reads it."""
    now = time.time()
    cache.set(HEARTBEAT_CACHE_KEY, now, timeout=300)
    return now
