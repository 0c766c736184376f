"""The escalation state machine, without HTTP: opening and attaching, one compare-and-set per
transition, exceptions on approval, audit events, the orphan sweep and cancel-on-suspend."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from channels.layers import channel_layers, get_channel_layer
from django.db import transaction
from django.utils import timezone

from agents.services import agent_suspend
from audit.chain import ADMIN_CHAIN, agent_chain
from audit.models import AuditEvent
from behavry.actors import Actor
from behavry.errors import Conflict
from escalations.models import Escalation, EscalationStatus
from escalations.notify import CONSOLE_GROUP, escalation_group
from escalations.services import (
    DECIDED_REPLAY,
    call_hash,
    escalation_approve,
    escalation_cancel,
    escalation_claim_forward,
    escalation_deny,
    escalation_expire,
    escalation_open,
    escalation_sweep,
)
from policies.models import PolicyException
from tests.conftest import TEST_ACTOR
from tests.escalations.helpers import open_escalation
from tests.factories import AgentFactory

pytestmark = pytest.mark.django_db

BOB = Actor(kind="person", id="2", name="bob-approver")

TRANSITIONS = {
    "approve": lambda e: escalation_approve(escalation=e, by=BOB, note="fine", create_exception=True),
    "deny": lambda e: escalation_deny(escalation=e, by=BOB, note="no"),
    "expire": lambda e: escalation_expire(escalation=e),
    "cancel": lambda e: escalation_cancel(escalation=e, reason="The client went away."),
}
END_STATE = {"approve": "approved", "deny": "denied", "expire": "expired", "cancel": "cancelled"}


@pytest.fixture
def agent(db):
    """A plain agent. (The package conftest's `agent` is the live proxy's, on transactional_db.)"""
    return AgentFactory(name="builder")


def reopen(agent, **call):
    """escalation_open for the same call as open_escalation's default, returning (escalation, created)."""
    defaults = {"server": "fs", "tool": "write_file", "arguments": {"path": "/srv/report.txt", "content": "hello"}}
    defaults |= call
    return escalation_open(
        agent_id=agent.pk,
        action="write",
        resource="/srv/report.txt",
        policy_id="hold-writes",
        reason="A human checks writes.",
        risk_tier="low",
        **defaults,
    )


def snapshot(escalation) -> tuple:
    """Everything a wrongful second transition could touch."""
    return (
        Escalation.objects.filter(pk=escalation.pk).values().get(),
        AuditEvent.objects.count(),
        PolicyException.objects.count(),
    )


# --- opening and attaching ---------------------------------------------------------------------


@pytest.mark.parametrize(("tier", "seconds"), [("low", 1800), ("medium", 1800), ("high", 900), ("critical", 300)])
def test_it_opens_a_pending_escalation_with_the_deadline_of_the_risk_tier(agent, tier, seconds):
    escalation = open_escalation(agent, risk_tier=tier)

    escalation.refresh_from_db()
    assert escalation.status == EscalationStatus.PENDING
    assert escalation.risk_tier == tier
    assert escalation.deadline - escalation.created_at == timedelta(seconds=seconds)
    assert escalation.decided_at is None and escalation.forwarded_at is None
    assert (escalation.server, escalation.tool, escalation.policy_id, escalation.request_id) == (
        "fs",
        "write_file",
        "hold-writes",
        "req-1",
    )


def test_it_takes_tier_timeouts_from_settings_and_falls_back_to_low(agent, settings):
    settings.BEHAVRY_ESCALATION_TIMEOUTS = {"low": 120, "medium": 90, "high": 60, "critical": 7}

    critical = open_escalation(agent, tool="drop_table", risk_tier="critical")
    unknown = open_escalation(agent, tool="rename", risk_tier="galactic")

    assert critical.deadline - critical.created_at == timedelta(seconds=7)
    assert unknown.deadline - unknown.created_at == timedelta(seconds=120)


def test_it_stores_the_arguments_redacted(agent):
    raw = {"path": "/srv/db.env", "password": "hunter2", "options": {"api_key": "sk-live-1", "mode": "w"}}

    escalation = open_escalation(agent, arguments=raw)

    escalation.refresh_from_db()
    assert escalation.arguments == {
        "path": "/srv/db.env",
        "password": "[redacted]",
        "options": {"api_key": "[redacted]", "mode": "w"},
    }
    row = str(Escalation.objects.filter(pk=escalation.pk).values().get())
    assert "hunter2" not in row and "sk-live-1" not in row


def test_the_call_hash_ignores_key_order_but_not_agent_server_tool_or_values():
    base = call_hash(agent_id=1, server="fs", tool="write", arguments={"a": 1, "b": {"x": 1, "y": [1, 2]}})

    assert base == call_hash(agent_id=1, server="fs", tool="write", arguments={"b": {"y": [1, 2], "x": 1}, "a": 1})
    others = [
        call_hash(agent_id=2, server="fs", tool="write", arguments={"a": 1, "b": {"x": 1, "y": [1, 2]}}),
        call_hash(agent_id=1, server="db", tool="write", arguments={"a": 1, "b": {"x": 1, "y": [1, 2]}}),
        call_hash(agent_id=1, server="fs", tool="read", arguments={"a": 1, "b": {"x": 1, "y": [1, 2]}}),
        call_hash(agent_id=1, server="fs", tool="write", arguments={"a": 1, "b": {"x": 1, "y": [2, 1]}}),
    ]
    assert base not in others and len(set(others)) == 4


def test_an_identical_call_attaches_to_the_pending_escalation(agent):
    first = open_escalation(agent, arguments={"path": "/a", "opts": {"mode": "w", "force": True}})

    again, created = reopen(agent, arguments={"opts": {"force": True, "mode": "w"}, "path": "/a"})

    assert (again.pk, created) == (first.pk, False)
    assert Escalation.objects.count() == 1


def test_a_different_call_opens_its_own_escalation(agent):
    first = open_escalation(agent)
    other_agent = AgentFactory(name="reviewer")

    variants = [
        reopen(agent, tool="delete_file"),
        reopen(agent, server="fs2"),
        reopen(agent, arguments={"path": "/srv/report.txt", "content": "bye"}),
        reopen(other_agent),
    ]

    assert all(created for _e, created in variants)
    assert len({first.pk, *(e.pk for e, _c in variants)}) == 5


def test_a_secret_argument_still_tells_calls_apart_although_it_is_stored_redacted(agent):
    first = open_escalation(agent, arguments={"user": "root", "password": "one"})

    same, created_same = reopen(agent, arguments={"user": "root", "password": "one"})
    other, created_other = reopen(agent, arguments={"user": "root", "password": "two"})

    assert (same.pk, created_same) == (first.pk, False)
    assert created_other and other.pk != first.pk
    assert other.arguments == first.arguments == {"user": "root", "password": "[redacted]"}


@pytest.mark.parametrize("decide", ["deny", "expire"])
def test_a_retry_soon_after_a_deny_or_expiry_gets_that_decision(agent, decide):
    escalation = open_escalation(agent)
    TRANSITIONS[decide](escalation)

    again, created = reopen(agent)

    assert (again.pk, created, again.status) == (escalation.pk, False, END_STATE[decide])


@pytest.mark.parametrize("decide", ["deny", "expire"])
def test_a_retry_after_the_replay_window_opens_a_new_escalation(agent, decide):
    escalation = open_escalation(agent)
    TRANSITIONS[decide](escalation)
    # Freeze time by moving the decision back instead of sleeping.
    Escalation.objects.filter(pk=escalation.pk).update(
        decided_at=timezone.now() - DECIDED_REPLAY - timedelta(seconds=1)
    )

    again, created = reopen(agent)

    assert created and again.pk != escalation.pk and again.status == EscalationStatus.PENDING


def test_a_retry_after_a_cancel_opens_a_new_escalation(agent):
    escalation = open_escalation(agent)
    escalation_cancel(escalation=escalation, reason="The client went away.")

    again, created = reopen(agent)

    assert created and again.pk != escalation.pk


def test_a_retry_gets_an_approval_until_the_call_is_forwarded(agent):
    escalation = open_escalation(agent)
    escalation_approve(escalation=escalation, by=BOB)

    again, created = reopen(agent)
    assert (again.pk, created, again.status) == (escalation.pk, False, EscalationStatus.APPROVED)

    assert escalation_claim_forward(escalation_id=escalation.pk)
    after_forward, created = reopen(agent)
    assert created and after_forward.pk != escalation.pk


def test_the_forward_of_an_approved_call_is_claimed_exactly_once(agent):
    escalation = open_escalation(agent)
    assert not escalation_claim_forward(escalation_id=escalation.pk)  # not approved yet

    escalation_approve(escalation=escalation, by=BOB)

    claims = [escalation_claim_forward(escalation_id=escalation.pk) for _ in range(3)]
    assert claims == [True, False, False]
    assert Escalation.objects.get(pk=escalation.pk).forwarded_at is not None


@pytest.mark.parametrize("decide", ["deny", "expire", "cancel"])
def test_a_call_that_was_not_approved_can_never_be_claimed_for_forwarding(agent, decide):
    escalation = open_escalation(agent)
    TRANSITIONS[decide](escalation)

    assert not escalation_claim_forward(escalation_id=escalation.pk)


# --- transitions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("first", list(TRANSITIONS))
@pytest.mark.parametrize("second", list(TRANSITIONS))
def test_a_second_transition_is_a_conflict_and_changes_nothing(agent, first, second):
    escalation = open_escalation(agent)
    # The loser of a race still holds a copy that says "pending": the check must be in the UPDATE.
    stale = Escalation.objects.get(pk=escalation.pk)
    TRANSITIONS[first](escalation)
    before = snapshot(escalation)

    with pytest.raises(Conflict) as exc:
        TRANSITIONS[second](stale)

    assert exc.value.status == 409
    assert exc.value.message == f"Escalation {escalation.pk} is already {END_STATE[first]}."
    assert snapshot(escalation) == before


def test_approving_records_who_why_and_when(agent):
    escalation = open_escalation(agent)

    approved = escalation_approve(escalation=escalation, by=BOB, note="looks fine")

    row = Escalation.objects.get(pk=escalation.pk)
    assert (row.status, row.decided_by, row.note, row.create_exception, row.exception_id) == (
        "approved",
        "person:bob-approver",
        "looks fine",
        False,
        None,
    )
    assert row.decided_at is not None and approved.decided_at == row.decided_at
    assert not PolicyException.objects.exists()


def test_approving_with_an_exception_creates_it_for_that_exact_call(agent):
    escalation = open_escalation(agent, resource="/srv/nightly.csv")

    approved = escalation_approve(escalation=escalation, by=BOB, note="nightly export", create_exception=True)

    exception = PolicyException.objects.get()
    assert (exception.agent_id, exception.server, exception.tool, exception.resource) == (
        agent.pk,
        "fs",
        "write_file",
        "/srv/nightly.csv",
    )
    assert (exception.escalation_id, exception.created_by, exception.note) == (
        escalation.pk,
        "person:bob-approver",
        "nightly export",
    )
    assert approved.exception_id == exception.pk
    assert Escalation.objects.get(pk=escalation.pk).exception_id == exception.pk
    assert Escalation.objects.get(pk=escalation.pk).create_exception is True


def test_approving_with_an_exception_that_already_exists_still_approves(agent):
    # Two writes to the same file with different content are held at once; the approver allows both.
    first = open_escalation(agent, arguments={"path": "/srv/report.txt", "content": "v1"})
    second = open_escalation(agent, arguments={"path": "/srv/report.txt", "content": "v2"})
    first = escalation_approve(escalation=first, by=BOB, create_exception=True)

    second = escalation_approve(escalation=second, by=BOB, create_exception=True)

    assert second.status == EscalationStatus.APPROVED
    assert second.exception_id == first.exception_id
    assert PolicyException.objects.count() == 1


@pytest.mark.parametrize("decide", ["approve", "deny"])
def test_a_human_decision_is_an_admin_audit_event_naming_the_actor(agent, decide):
    escalation = open_escalation(agent)

    if decide == "approve":
        escalation_approve(escalation=escalation, by=BOB, note="because")
    else:
        escalation_deny(escalation=escalation, by=BOB, note="because")

    event = AuditEvent.objects.get(action=f"escalation.{decide}")
    assert (event.kind, event.chain, event.actor, event.agent_id, event.resource, event.reason) == (
        "admin",
        ADMIN_CHAIN,
        "person:bob-approver",
        agent.pk,
        f"escalation:{escalation.pk}",
        "because",
    )
    assert {"tool": "write_file", "server": "fs"}.items() <= event.details.items()
    assert not AuditEvent.objects.filter(chain=agent_chain(agent.pk)).exists()


@pytest.mark.parametrize(
    ("decide", "policy_id"), [("expire", "escalation.expired"), ("cancel", "escalation.cancelled")]
)
def test_expiry_and_cancel_are_deny_decisions_on_the_agents_chain(agent, decide, policy_id):
    escalation = open_escalation(agent, request_id="req-77")

    TRANSITIONS[decide](escalation)

    event = AuditEvent.objects.get(chain=agent_chain(agent.pk))
    assert (event.kind, event.decision, event.policy_id, event.actor) == (
        "decision",
        "deny",
        policy_id,
        "system:behavry",
    )
    assert (event.agent_id, event.server, event.tool, event.resource, event.request_id, event.session) == (
        agent.pk,
        "fs",
        "write_file",
        "/srv/report.txt",
        "req-77",
        "sess-1",
    )
    assert event.details == {"escalation_id": escalation.pk, "status": END_STATE[decide]}
    row = Escalation.objects.get(pk=escalation.pk)
    assert (row.status, row.decided_by, row.note == event.reason) == (END_STATE[decide], "system:behavry", True)
    assert not AuditEvent.objects.filter(chain=ADMIN_CHAIN).exists()


# --- sweep ---------------------------------------------------------------------------------------


def test_the_sweep_expires_only_pending_escalations_past_their_deadline(agent):
    critical = open_escalation(agent, tool="drop_table", risk_tier="critical")  # 5 minutes
    low = open_escalation(agent, tool="write_file", risk_tier="low")  # 30 minutes
    denied = open_escalation(agent, tool="truncate", risk_tier="critical")
    escalation_deny(escalation=denied, by=BOB)

    expired = escalation_sweep(now=timezone.now() + timedelta(minutes=6))

    assert expired == 1
    statuses = dict(Escalation.objects.values_list("tool", "status"))
    assert statuses == {"drop_table": "expired", "write_file": "pending", "truncate": "denied"}
    assert Escalation.objects.get(pk=low.pk).decided_at is None
    assert AuditEvent.objects.get(policy_id="escalation.expired").details["escalation_id"] == critical.pk


def test_the_sweep_reads_the_deadline_column(agent):
    overdue = open_escalation(agent, tool="drop_table")
    Escalation.objects.filter(pk=overdue.pk).update(deadline=timezone.now() - timedelta(seconds=1))
    open_escalation(agent, tool="write_file")

    assert escalation_sweep() == 1
    assert Escalation.objects.get(pk=overdue.pk).status == EscalationStatus.EXPIRED


def test_two_sweeps_in_a_row_expire_each_escalation_once(agent):
    for tool in ("a", "b", "c"):
        open_escalation(agent, tool=tool, risk_tier="high")
    later = timezone.now() + timedelta(minutes=16)

    assert [escalation_sweep(now=later), escalation_sweep(now=later)] == [3, 0]
    assert AuditEvent.objects.filter(policy_id="escalation.expired").count() == 3
    assert set(Escalation.objects.values_list("status", flat=True)) == {"expired"}


# --- suspension ----------------------------------------------------------------------------------


def test_suspending_an_agent_cancels_its_pending_escalations_only(agent):
    other = AgentFactory(name="reviewer")
    mine = [open_escalation(agent, tool="a"), open_escalation(agent, tool="b")]
    decided = open_escalation(agent, tool="c")
    escalation_deny(escalation=decided, by=BOB)
    theirs = open_escalation(other, tool="a")

    agent_suspend(agent=agent, by=TEST_ACTOR, reason="runaway")

    assert [Escalation.objects.get(pk=e.pk).status for e in mine] == ["cancelled", "cancelled"]
    assert Escalation.objects.get(pk=decided.pk).status == EscalationStatus.DENIED
    assert Escalation.objects.get(pk=theirs.pk).status == EscalationStatus.PENDING
    cancels = AuditEvent.objects.filter(policy_id="escalation.cancelled")
    assert sorted(e.details["escalation_id"] for e in cancels) == sorted(e.pk for e in mine)
    assert {e.chain for e in cancels} == {agent_chain(agent.pk)}
    assert {e.reason for e in cancels} == {"The agent was suspended."}
    suspend = AuditEvent.objects.get(action="agent.suspend")
    assert suspend.details["escalations_cancelled"] == 2


# --- announcements after commit ------------------------------------------------------------------


@pytest.fixture
def layer(monkeypatch):
    """A fresh process-wide channel layer, so its event loops are this test's alone."""
    monkeypatch.setattr(channel_layers, "backends", {})
    return get_channel_layer()


def subscribe(layer, group: str) -> str:
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(group, channel)
    return channel


def receive(layer, channel: str) -> dict:
    async def first():
        return await asyncio.wait_for(layer.receive(channel), 5)

    return async_to_sync(first)()


@pytest.mark.django_db(transaction=True)
def test_changes_are_announced_on_the_channel_layer_only_once_committed(agent, layer):
    console = subscribe(layer, CONSOLE_GROUP)
    with pytest.raises(RuntimeError), transaction.atomic():
        open_escalation(agent, tool="rolled_back")
        escalation_deny(escalation=Escalation.objects.get(tool="rolled_back"), by=BOB)
        raise RuntimeError("the surrounding request failed")

    escalation = open_escalation(agent)
    waiter = subscribe(layer, escalation_group(escalation.pk))
    escalation_deny(escalation=escalation, by=BOB)

    # Messages queue in order, so a leaked message from the rolled-back work would arrive first.
    created = {"type": "escalation.changed", "event": "created", "id": escalation.pk, "status": "pending"}
    denied = created | {"event": "denied", "status": "denied"}
    assert [receive(layer, console), receive(layer, console)] == [created, denied]
    assert receive(layer, waiter) == denied
