"""Telling the world an escalation changed: the held request's channel group, the live console,
and the outgoing webhook. Called only after the change has committed."""

from __future__ import annotations

import asyncio
import logging
from contextlib import contextmanager
from contextvars import ContextVar

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

logger = logging.getLogger("behavry.escalations")

CONSOLE_GROUP = "console.escalations"
SEND_CONCURRENCY = 100


def escalation_group(escalation_id: int) -> str:
    return f"escalation.{escalation_id}"


_batch: ContextVar[list | None] = ContextVar("behavry_notify_batch", default=None)


def _send(messages: list[tuple[str, dict]]) -> None:
    layer = get_channel_layer()
    if layer is None or not messages:
        return

    async def send_all():
        # Bounded: channels_redis keeps a small connection pool, and a bulk decision of 1,000
        # escalations would otherwise ask for 2,000 connections at once ("Too many connections").
        gate = asyncio.Semaphore(SEND_CONCURRENCY)

        async def one(group: str, message: dict) -> None:
            async with gate:
                await layer.group_send(group, message)

        await asyncio.gather(*(one(group, message) for group, message in messages))

    try:
        async_to_sync(send_all)()
    except Exception:
        # The waiter re-reads the row every 2 s, so a lost message costs at most that; the
        # database stays the source of truth.
        logger.warning("channel layer unavailable; %d messages not sent", len(messages), exc_info=True)


@contextmanager
def notify_batch():
    """Collect the notifications of many decisions and send them together (bulk decisions):
    one hop to the event loop instead of two per escalation."""
    token = _batch.set([])
    try:
        yield
    finally:
        pending = _batch.get() or []
        _batch.reset(token)
        _send(pending)


def notify(event: str, escalation) -> None:
    message = {"type": "escalation.changed", "event": event, "id": escalation.pk, "status": escalation.status}
    messages = [(escalation_group(escalation.pk), message), (CONSOLE_GROUP, message)]
    batch = _batch.get()
    if batch is not None:
        batch.extend(messages)
    else:
        _send(messages)
    if settings.BEHAVRY_WEBHOOK_URL:
        from escalations.tasks import deliver_webhook

        try:
            deliver_webhook.delay(event, escalation.pk)
        except Exception:
            logger.exception("could not queue the %s webhook for escalation %s", event, escalation.pk)
