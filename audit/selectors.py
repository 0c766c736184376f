from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from asgiref.sync import sync_to_async
from django.db.models import QuerySet

from audit.models import AuditEvent

EXPORT_BATCH = 2000


def audit_event_batches(queryset: QuerySet[AuditEvent], columns: tuple[str, ...]) -> Iterator[list[dict[str, Any]]]:
    """Rows of `queryset` newest first, in keyset batches on id, so memory stays flat at any size."""
    last_id = None
    while True:
        page = queryset.order_by("-id")
        if last_id is not None:
            page = page.filter(id__lt=last_id)
        batch = list(page.values(*columns)[:EXPORT_BATCH])
        if not batch:
            return
        yield batch
        last_id = batch[-1]["id"]


async def audit_event_batches_async(
    queryset: QuerySet[AuditEvent], columns: tuple[str, ...]
) -> AsyncIterator[list[dict[str, Any]]]:
    """The same batches for an ASGI streaming response; each query runs in the sync thread."""
    batches = audit_event_batches(queryset, columns)
    sentinel: list[dict[str, Any]] = []

    def next_batch() -> list[dict[str, Any]]:
        return next(batches, sentinel)

    while True:
        batch = await sync_to_async(next_batch, thread_sensitive=True)()
        if batch is sentinel:
            return
        yield batch
