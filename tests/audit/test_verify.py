"""Verification catches every kind of tampering: modified, deleted, inserted and reordered rows."""

from io import StringIO

import pytest
from django.core.management import call_command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit.chain import event_hash, head_signature
from audit.models import AuditChainHead, AuditEvent
from audit.services import audit_admin, audit_record
from audit.verify import audit_verify
from tests.audit.tamper import tamper
from tests.conftest import TEST_ACTOR
from tests.factories import AgentFactory

pytestmark = pytest.mark.django_db


def make_chain(agent, n: int) -> list[AuditEvent]:
    return [
        audit_record(
            kind="decision", actor=TEST_ACTOR, agent=agent, tool=f"tool-{i}", decision="allow", arguments={"i": i}
        )
        for i in range(n)
    ]


def test_a_clean_trail_verifies():
    make_chain(AgentFactory(), 5)
    make_chain(AgentFactory(), 3)
    audit_admin(by=TEST_ACTOR, operation="agent.suspend")
    result = audit_verify()
    assert result.ok and result.first_broken is None
    assert (result.chains_checked, result.events_checked) == (3, 9)


def test_it_detects_a_modified_field():
    events = make_chain(AgentFactory(), 5)
    tamper("UPDATE audit_auditevent SET decision = 'deny' WHERE id = %s", [events[2].id])
    result = audit_verify()
    assert not result.ok
    assert (result.first_broken.event_id, result.first_broken.seq) == (events[2].id, 3)
    assert "modified" in result.first_broken.reason


def test_it_detects_a_modified_json_argument():
    events = make_chain(AgentFactory(), 3)
    tamper("UPDATE audit_auditevent SET arguments = %s WHERE id = %s", ['{"i": 99}', events[1].id])
    assert audit_verify().first_broken.event_id == events[1].id


def test_it_detects_a_deleted_row():
    events = make_chain(AgentFactory(), 5)
    tamper("DELETE FROM audit_auditevent WHERE id = %s", [events[1].id])
    broken = audit_verify().first_broken
    assert broken.seq == 3 and "gap" in broken.reason


def test_it_detects_a_deleted_tail():
    events = make_chain(AgentFactory(), 5)
    tamper("DELETE FROM audit_auditevent WHERE id IN (%s, %s)", [events[3].id, events[4].id])
    broken = audit_verify().first_broken
    assert "signed head is #5" in broken.reason


def forge(agent, *, after: AuditEvent, seq: int, tool: str) -> str:
    """Insert a well-formed event linked to `after`, as a forger without the secret would. Returns its hash."""
    fields = {
        **dict.fromkeys(("session", "server", "action", "resource", "policy_id", "reason", "request_id"), ""),
        "chain": after.chain,
        "seq": seq,
        "timestamp": after.timestamp,
        "kind": "decision",
        "agent_id": agent.pk,
        "agent_name": agent.name,
        "tool": tool,
        "decision": "allow",
        "actor": "system:tests",
        "latency_ms": None,
        "arguments": {},
        "trace": [],
        "dlp_findings": [],
        "details": {},
    }
    digest = event_hash(fields, after.event_hash)
    tamper(
        "INSERT INTO audit_auditevent (chain, seq, timestamp, kind, agent_id, agent_name, session, server, tool,"
        " action, resource, decision, policy_id, reason, request_id, actor, latency_ms, arguments, trace,"
        " dlp_findings, details, previous_hash, event_hash) VALUES (%s, %s, %s, 'decision', %s, %s, '', '', %s,"
        " '', '', 'allow', '', '', '', 'system:tests', NULL, '{}', '[]', '[]', '{}', %s, %s)",
        [after.chain, seq, after.timestamp, agent.pk, agent.name, tool, after.event_hash, digest],
    )
    return digest


def test_it_detects_an_inserted_row_even_with_a_recomputed_hash():
    agent = AgentFactory()
    events = make_chain(agent, 3)
    # The forger renumbers the tail to make room, then inserts a well-formed event at #2.
    tamper("UPDATE audit_auditevent SET seq = seq + 10 WHERE chain = %s AND seq >= 2", [events[0].chain])
    forge(agent, after=events[0], seq=2, tool="exfiltrate")
    result = audit_verify()
    assert not result.ok
    assert result.first_broken.seq == 12  # the forged #2 links fine; the renumbered #2 no longer does


def test_it_detects_an_appended_forged_event_by_the_signed_head():
    agent = AgentFactory()
    events = make_chain(agent, 2)
    digest = forge(agent, after=events[1], seq=3, tool="exfiltrate")
    assert "signed head is #2" in audit_verify().first_broken.reason
    # The forger also moves the head but cannot sign it without Behavry's secret.
    AuditChainHead.objects.filter(chain=events[0].chain).update(seq=3, last_hash=digest, signature="0" * 64)
    assert "signature is invalid" in audit_verify().first_broken.reason
    AuditChainHead.objects.filter(chain=events[0].chain).update(signature=head_signature(events[0].chain, 3, digest))
    assert audit_verify().ok  # only the key holder can extend a chain: that is the guarantee


def test_it_detects_reordered_rows():
    events = make_chain(AgentFactory(), 4)
    a, b = events[1], events[2]
    tamper("UPDATE audit_auditevent SET seq = 999999 WHERE id = %s", [a.id])
    tamper("UPDATE audit_auditevent SET seq = 2 WHERE id = %s", [b.id])
    tamper("UPDATE audit_auditevent SET seq = 3 WHERE id = %s", [a.id])
    broken = audit_verify().first_broken
    assert broken.seq == 2 and broken.event_id == b.id


def test_it_checks_only_one_agent_when_asked():
    good, bad = AgentFactory(), AgentFactory()
    make_chain(good, 3)
    bad_events = make_chain(bad, 3)
    tamper("UPDATE audit_auditevent SET tool = 'x' WHERE id = %s", [bad_events[0].id])
    assert audit_verify(agent_id=good.pk).ok
    assert not audit_verify(agent_id=bad.pk).ok


def test_since_starts_mid_chain_and_still_checks_what_follows():
    events = make_chain(AgentFactory(), 6)
    result = audit_verify(since=events[3].timestamp)
    assert result.ok and result.events_checked == 3
    tamper("UPDATE audit_auditevent SET tool = 'x' WHERE id = %s", [events[4].id])
    assert audit_verify(since=events[3].timestamp).first_broken.event_id == events[4].id


def test_the_command_prints_ok_or_the_broken_event():
    events = make_chain(AgentFactory(), 3)
    out = StringIO()
    call_command("verify_audit", stdout=out)
    assert out.getvalue().startswith("ok: 3 events in 1 chains")
    tamper("UPDATE audit_auditevent SET reason = 'edited' WHERE id = %s", [events[1].id])
    out = StringIO()
    with pytest.raises(SystemExit) as exit_info:
        call_command("verify_audit", stdout=out)
    assert exit_info.value.code == 1
    assert f"event id={events[1].id} seq=2" in out.getvalue()


TAMPERS = ["modify", "delete", "swap", "drop_head"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(min_value=2, max_value=8), op=st.sampled_from(TAMPERS), data=st.data())
def test_any_single_tampering_is_detected(n, op, data):
    tamper("DELETE FROM audit_auditevent")  # fresh trail per example
    AuditChainHead.objects.all().delete()
    events = make_chain(AgentFactory(), n)
    assert audit_verify().ok
    i = data.draw(st.integers(min_value=0, max_value=n - 1))
    target = events[i]
    if op == "modify":
        field = data.draw(st.sampled_from(["tool", "decision", "actor", "reason", "policy_id"]))
        tamper(f"UPDATE audit_auditevent SET {field} = %s WHERE id = %s", [f"x{field}"[:16], target.id])  # noqa: S608
    elif op == "delete":
        tamper("DELETE FROM audit_auditevent WHERE id = %s", [target.id])
    elif op == "swap":
        j = data.draw(st.integers(min_value=0, max_value=n - 1).filter(lambda j: j != i))
        other = events[j]
        tamper("UPDATE audit_auditevent SET seq = 999999 WHERE id = %s", [target.id])
        tamper("UPDATE audit_auditevent SET seq = %s WHERE id = %s", [target.seq, other.id])
        tamper("UPDATE audit_auditevent SET seq = %s WHERE id = %s", [other.seq, target.id])
    else:
        AuditChainHead.objects.all().delete()
    assert not audit_verify().ok
