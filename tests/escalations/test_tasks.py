"""Celery adapters: the signed outgoing webhook (against a real local HTTP receiver), its retry
policy, queueing it after commit, and the orphan sweep on the beat schedule."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from django.db import transaction
from django.utils import timezone
from kombu.exceptions import OperationalError

from audit.models import AuditEvent
from behavry.actors import Actor
from behavry.celery import app as celery_app
from escalations.models import Escalation, EscalationStatus
from escalations.services import escalation_approve, escalation_deny
from escalations.tasks import WebhookRejected, deliver_webhook, sweep
from tests.conftest import free_port
from tests.escalations.helpers import open_escalation
from tests.factories import AgentFactory

pytestmark = pytest.mark.django_db

SECRET = "webhook-shared-secret-0123456789"
BOB = Actor(kind="person", id="2", name="bob-approver")
HANG_UP = 0  # an answer that closes the connection without a response


class _Recorder(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append({"path": self.path, "headers": self.headers, "body": body})
        status = self.server.status
        if status == HANG_UP:
            self.close_connection = True
            return
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format, *args):
        pass


@pytest.fixture
def receiver(settings):
    """A real webhook receiver on a free local port that records every request it gets."""
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Recorder)
    server.received = []
    server.status = 204
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    settings.BEHAVRY_WEBHOOK_URL = f"http://127.0.0.1:{server.server_port}/hooks/behavry"
    settings.BEHAVRY_WEBHOOK_SECRET = SECRET
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def agent(db):
    """A plain agent. (The package conftest's `agent` is the live proxy's, on transactional_db.)"""
    return AgentFactory(name="builder")


@pytest.fixture
def escalation(agent) -> Escalation:
    return open_escalation(agent, arguments={"path": "/srv/report.txt", "password": "hunter2"})


@pytest.fixture
def queued(monkeypatch) -> list[tuple]:
    """What notify() handed to the broker. Celery's broker is a process boundary, so only
    `delay` is replaced; everything up to it runs for real."""
    calls: list[tuple] = []
    monkeypatch.setattr("escalations.tasks.deliver_webhook.delay", lambda *args: calls.append(args))
    return calls


def signed(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# --- delivery ------------------------------------------------------------------------------------


def test_it_posts_the_event_signed_with_hmac_sha256_of_the_body(receiver, agent, escalation):
    result = deliver_webhook.apply(args=("created", escalation.pk))

    assert (result.state, result.result) == ("SUCCESS", 204)
    [request] = receiver.received
    assert request["path"] == "/hooks/behavry"
    assert request["headers"]["Content-Type"] == "application/json"
    assert hmac.compare_digest(request["headers"]["X-Behavry-Signature"], signed(request["body"]))
    assert request["headers"]["X-Behavry-Signature"] != signed(request["body"], "some-other-secret-value")
    row = Escalation.objects.get(pk=escalation.pk)
    assert json.loads(request["body"]) == {
        "event": "escalation.created",
        "escalation": {
            "id": escalation.pk,
            "status": "pending",
            "agent": agent.pk,
            "server": "fs",
            "tool": "write_file",
            "action": "write",
            "resource": "/srv/report.txt",
            "policy_id": "hold-writes",
            "reason": "A human checks writes.",
            "risk_tier": "low",
            "created_at": row.created_at.isoformat(),
            "deadline": row.deadline.isoformat(),
            "decided_by": "",
            "note": "",
        },
    }
    assert b"hunter2" not in request["body"]


def test_a_decision_event_carries_who_decided_and_why(receiver, escalation):
    escalation_deny(escalation=escalation, by=BOB, note="not on a Friday")

    deliver_webhook.apply(args=("denied", escalation.pk))

    [request] = receiver.received
    payload = json.loads(request["body"])
    assert payload["event"] == "escalation.denied"
    assert {k: payload["escalation"][k] for k in ("status", "decided_by", "note")} == {
        "status": "denied",
        "decided_by": "person:bob-approver",
        "note": "not on a Friday",
    }
    assert request["headers"]["X-Behavry-Signature"] == signed(request["body"])


def test_a_5xx_answer_raises_so_celery_retries(receiver, escalation):
    receiver.status = 503

    with pytest.raises(WebhookRejected, match="503"):
        deliver_webhook("created", escalation.pk)


def test_a_5xx_answer_is_retried_up_to_max_retries_then_fails(receiver, escalation):
    receiver.status = 500

    # apply() runs Celery's retry path eagerly (no countdown), so each retry is one more request.
    result = deliver_webhook.apply(args=("created", escalation.pk))

    assert result.state == "FAILURE"
    assert isinstance(result.result, WebhookRejected)
    assert len(receiver.received) == 1 + deliver_webhook.max_retries == 9
    assert len({r["body"] for r in receiver.received}) == 1


def test_a_dropped_connection_is_retried_too(receiver, escalation):
    receiver.status = HANG_UP

    result = deliver_webhook.apply(args=("created", escalation.pk))

    assert result.state == "FAILURE"
    assert isinstance(result.result, httpx.HTTPError)
    assert len(receiver.received) == 1 + deliver_webhook.max_retries


def test_retries_back_off_exponentially_up_to_ten_minutes():
    assert deliver_webhook.retry_backoff is True
    assert deliver_webhook.retry_backoff_max == 600
    assert set(deliver_webhook.autoretry_for) == {httpx.HTTPError, WebhookRejected}


@pytest.mark.parametrize("status", [400, 404, 410])
def test_a_4xx_answer_is_not_retried(receiver, escalation, status):
    receiver.status = status

    result = deliver_webhook.apply(args=("created", escalation.pk))

    assert (result.state, result.result) == ("SUCCESS", status)
    assert len(receiver.received) == 1


def test_without_a_webhook_url_nothing_is_sent(receiver, settings, escalation):
    settings.BEHAVRY_WEBHOOK_URL = ""

    result = deliver_webhook.apply(args=("created", escalation.pk))

    assert (result.state, result.result) == ("SUCCESS", 0)
    assert receiver.received == []


def test_an_escalation_that_is_gone_sends_nothing(receiver):
    assert deliver_webhook.apply(args=("created", 987654321)).result == 0
    assert receiver.received == []


# --- queueing after commit -----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_notify_queues_the_webhook_only_once_the_change_commits(receiver, queued, agent):
    with pytest.raises(RuntimeError), transaction.atomic():
        open_escalation(agent, tool="rolled_back")
        raise RuntimeError("the surrounding request failed")
    assert queued == []

    with transaction.atomic():
        escalation = open_escalation(agent)
        assert queued == []  # not before commit
    assert queued == [("created", escalation.pk)]

    escalation_approve(escalation=escalation, by=BOB)
    assert queued == [("created", escalation.pk), ("approved", escalation.pk)]


def test_without_a_webhook_url_notify_queues_nothing(settings, queued, agent, django_capture_on_commit_callbacks):
    settings.BEHAVRY_WEBHOOK_URL = ""

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        escalation_deny(escalation=open_escalation(agent), by=BOB)

    assert len(callbacks) == 2
    assert queued == []


def test_a_broker_outage_does_not_undo_the_decision(
    receiver, monkeypatch, agent, caplog, django_capture_on_commit_callbacks
):
    def broker_down(*args):
        raise OperationalError("connection refused")

    monkeypatch.setattr("escalations.tasks.deliver_webhook.delay", broker_down)
    escalation = open_escalation(agent)

    with django_capture_on_commit_callbacks(execute=True):
        escalation_deny(escalation=escalation, by=BOB)

    assert Escalation.objects.get(pk=escalation.pk).status == EscalationStatus.DENIED
    assert f"could not queue the denied webhook for escalation {escalation.pk}" in caplog.text


def test_a_committed_decision_reaches_the_receiver(receiver, monkeypatch, agent, django_capture_on_commit_callbacks):
    # A broker that runs the task at once, so the real task meets the real receiver.
    monkeypatch.setattr("escalations.tasks.deliver_webhook.delay", lambda *args: deliver_webhook.apply(args=args))

    with django_capture_on_commit_callbacks(execute=True):
        escalation = open_escalation(agent)
    with django_capture_on_commit_callbacks(execute=True):
        escalation_approve(escalation=escalation, by=BOB, note="ok")

    events = [json.loads(r["body"]) for r in receiver.received]
    assert [(e["event"], e["escalation"]["id"]) for e in events] == [
        ("escalation.created", escalation.pk),
        ("escalation.approved", escalation.pk),
    ]
    assert all(r["headers"]["X-Behavry-Signature"] == signed(r["body"]) for r in receiver.received)


# --- the sweep -----------------------------------------------------------------------------------


def test_beat_runs_the_escalation_sweep_every_30_seconds():
    entry = celery_app.conf.beat_schedule["escalation-sweep"]

    assert entry == {"task": "escalations.tasks.sweep", "schedule": 30.0}
    assert celery_app.tasks[entry["task"]].name == sweep.name


def test_the_sweep_task_expires_orphans_and_announces_them(queued, receiver, agent, django_capture_on_commit_callbacks):
    orphan = open_escalation(agent, tool="drop_table")
    Escalation.objects.filter(pk=orphan.pk).update(deadline=timezone.now() - timedelta(seconds=1))
    waiting = open_escalation(agent, tool="write_file")

    with django_capture_on_commit_callbacks(execute=True):
        expired = celery_app.tasks["escalations.tasks.sweep"].apply().result

    assert expired == 1
    assert Escalation.objects.get(pk=orphan.pk).status == EscalationStatus.EXPIRED
    assert Escalation.objects.get(pk=waiting.pk).status == EscalationStatus.PENDING
    assert AuditEvent.objects.get(policy_id="escalation.expired").details["escalation_id"] == orphan.pk
    assert queued == [("expired", orphan.pk)]
    assert sweep.apply().result == 0  # the next beat finds nothing left to do
