"""Telling the world an escalation changed: the held request's channel group, the live console,
and the outgoing webhook. Called only after the change has committed."""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

logger = logging.getLogger("behavry.escalations")

CONSOLE_GROUP = "console.escalations"


def escalation_group(escalation_id: int) -> str:
    return f"escalation.{escalation_id}"


def _send(group: str, message: dict) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(group, message)
    except Exception:
        # The waiter re-reads the row every 2 s, so a lost message costs at most that; the
        # database stays the source of truth.
        logger.warning("channel layer unavailable; %s not notified", group, exc_info=True)


def notify(event: str, escalation) -> None:
    message = {"type": "escalation.changed", "event": event, "id": escalation.pk, "status": escalation.status}
    _send(escalation_group(escalation.pk), message)
    _send(CONSOLE_GROUP, message)
    if settings.BEHAVRY_WEBHOOK_URL:
        from escalations.tasks import deliver_webhook

        try:
            deliver_webhook.delay(event, escalation.pk)
        except Exception:
            logger.exception("could not queue the %s webhook for escalation %s", event, escalation.pk)
