"""Celery adapters for escalations: the orphan sweep and webhook delivery."""

from __future__ import annotations

import hashlib
import hmac
import json

import httpx
from celery import shared_task
from django.conf import settings

from escalations.models import Escalation
from escalations.services import escalation_sweep


@shared_task(name="escalations.tasks.sweep", ignore_result=True)
def sweep() -> int:
    return escalation_sweep()


class WebhookRejected(Exception):
    pass


def webhook_body(event: str, escalation: Escalation) -> bytes:
    payload = {
        "event": f"escalation.{event}",
        "escalation": {
            "id": escalation.pk,
            "status": escalation.status,
            "agent": escalation.agent_id,
            "server": escalation.server,
            "tool": escalation.tool,
            "action": escalation.action,
            "resource": escalation.resource,
            "policy_id": escalation.policy_id,
            "reason": escalation.reason,
            "risk_tier": escalation.risk_tier,
            "created_at": escalation.created_at.isoformat(),
            "deadline": escalation.deadline.isoformat(),
            "decided_by": escalation.decided_by,
            "note": escalation.note,
        },
    }
    return json.dumps(payload, sort_keys=True).encode()


def webhook_signature(body: bytes) -> str:
    return "sha256=" + hmac.new(settings.BEHAVRY_WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()


@shared_task(
    name="escalations.tasks.deliver_webhook",
    ignore_result=True,
    autoretry_for=(httpx.HTTPError, WebhookRejected),
    retry_backoff=True,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=8,
)
def deliver_webhook(event: str, escalation_id: int) -> int:
    """POST the signed event; 5xx and network errors retry with backoff, 4xx gives up."""
    escalation = Escalation.objects.filter(pk=escalation_id).first()
    if escalation is None or not settings.BEHAVRY_WEBHOOK_URL:
        return 0
    body = webhook_body(event, escalation)
    response = httpx.post(
        settings.BEHAVRY_WEBHOOK_URL,
        content=body,
        headers={"Content-Type": "application/json", "X-Behavry-Signature": webhook_signature(body)},
        timeout=10,
    )
    if response.status_code >= 500:
        raise WebhookRejected(f"webhook answered {response.status_code}")
    return response.status_code
