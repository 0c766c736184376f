from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from audit.services import audit_truncate


@shared_task(name="audit.tasks.apply_retention", ignore_result=True)
def apply_retention() -> dict[str, int]:
    """Delete audit events older than BEHAVRY_AUDIT_RETENTION_DAYS, leaving signed checkpoints."""
    cutoff = timezone.now() - timedelta(days=settings.BEHAVRY_AUDIT_RETENTION_DAYS)
    return audit_truncate(before=cutoff)
