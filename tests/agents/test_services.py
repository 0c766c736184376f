from datetime import timedelta

import pytest
from django.utils import timezone

from agents.models import AgentSession, AgentStatus, AgentToken
from agents.selectors import agent_token_authenticate
from agents.services import (
    SESSION_TOUCH_SECONDS,
    EndedSession,
    agent_create,
    agent_reactivate,
    agent_session_expire_idle,
    agent_session_open,
    agent_session_touch,
    agent_suspend,
    agent_token_issue,
    agent_token_revoke,
    agent_update,
    role_create,
)
from behavry.errors import Conflict, InvalidInput
from behavry.tokens import AGENT_TOKEN_KIND, secret_digest
from tests.conftest import TEST_ACTOR
from tests.factories import AgentFactory, AgentSessionFactory, UpstreamServerFactory

pytestmark = pytest.mark.django_db


def test_it_creates_an_agent_with_roles():
    role_create(name="readers", by=TEST_ACTOR)
    agent = agent_create(name="bot", owner="team", roles=["readers"], max_hold_seconds=40, by=TEST_ACTOR)
    assert agent.status == AgentStatus.ACTIVE
    assert agent.risk_tier == "low"
    assert [r.name for r in agent.roles.all()] == ["readers"]


def test_it_refuses_unknown_roles_duplicate_names_and_bad_hold():
    agent_create(name="bot", by=TEST_ACTOR)
    with pytest.raises(InvalidInput) as exc:
        agent_create(name="bot", by=TEST_ACTOR)
    assert "name" in exc.value.fields
    with pytest.raises(InvalidInput) as exc:
        agent_create(name="other", roles=["ghosts"], by=TEST_ACTOR)
    assert exc.value.fields == {"roles": ["Unknown: ghosts"]}
    with pytest.raises(InvalidInput):
        agent_create(name="third", max_hold_seconds=0, by=TEST_ACTOR)


def test_it_updates_only_editable_fields():
    agent = AgentFactory()
    agent_update(agent=agent, owner="new-owner", by=TEST_ACTOR)
    agent.refresh_from_db()
    assert agent.owner == "new-owner"
    with pytest.raises(InvalidInput):
        agent_update(agent=agent, status="suspended", by=TEST_ACTOR)


def test_it_suspends_and_ends_every_open_session_of_that_agent_only():
    agent, bystander = AgentFactory(), AgentFactory()
    server = UpstreamServerFactory()
    AgentSession.objects.create(id="s1", agent=agent, server=server)
    AgentSession.objects.create(id="s2", agent=agent, server=server)
    AgentSession.objects.create(id="s3", agent=bystander, server=server)

    agent_suspend(agent=agent, reason="runaway", by=TEST_ACTOR)

    agent.refresh_from_db()
    assert agent.status == AgentStatus.SUSPENDED
    assert agent.suspended_reason == "runaway"
    assert set(AgentSession.objects.filter(ended_at__isnull=False).values_list("id", flat=True)) == {"s1", "s2"}
    assert AgentSession.objects.get(id="s3").is_open


def test_it_refuses_a_second_suspend_and_reactivates():
    agent = AgentFactory()
    agent_suspend(agent=agent, by=TEST_ACTOR)
    with pytest.raises(Conflict):
        agent_suspend(agent=agent, by=TEST_ACTOR)
    agent_reactivate(agent=agent, by=TEST_ACTOR)
    agent.refresh_from_db()
    assert agent.status == AgentStatus.ACTIVE and agent.suspended_at is None
    with pytest.raises(Conflict):
        agent_reactivate(agent=agent, by=TEST_ACTOR)


def test_it_stores_only_a_digest_of_a_256_bit_token():
    agent = AgentFactory()
    token, raw = agent_token_issue(agent=agent, label="ci", by=TEST_ACTOR)
    assert raw.startswith(AGENT_TOKEN_KIND)
    assert len(raw) - len(AGENT_TOKEN_KIND) >= 43  # 32 random bytes, base64url
    stored = AgentToken.objects.get(pk=token.pk)
    assert stored.token_hash == secret_digest(raw)
    assert raw not in {str(v) for v in AgentToken.objects.values().get(pk=token.pk).values()}
    assert raw.startswith(stored.prefix)


def test_it_authenticates_a_token_until_revoked():
    agent = AgentFactory()
    token, raw = agent_token_issue(agent=agent, by=TEST_ACTOR)
    found = agent_token_authenticate(raw)
    assert found.pk == token.pk and found.agent == agent
    assert found.last_used_at is not None
    agent_token_revoke(token=token, by=TEST_ACTOR)
    assert agent_token_authenticate(raw) is None
    with pytest.raises(Conflict):
        agent_token_revoke(token=token, by=TEST_ACTOR)


def test_it_does_not_authenticate_garbage_or_api_keys():
    assert agent_token_authenticate("") is None
    assert agent_token_authenticate("bhv_agent_not-a-real-token") is None
    assert agent_token_authenticate("bhv_key_whatever") is None


# --- sessions: last_seen_at, idle expiry, the per-agent cap ---------------------------------------


def seen(session_id, agent, server, seconds_ago, **fields):
    """A session last seen `seconds_ago`."""
    last_seen_at = timezone.now() - timedelta(seconds=seconds_ago)
    return AgentSessionFactory(id=session_id, agent=agent, server=server, last_seen_at=last_seen_at, **fields)


def open_ids():
    return set(AgentSession.objects.filter(ended_at__isnull=True).values_list("id", flat=True))


def test_a_touch_moves_last_seen_at_once_per_window():
    agent, server = AgentFactory(), UpstreamServerFactory()
    session = seen("s1", agent, server, SESSION_TOUCH_SECONDS + 5)

    assert agent_session_touch(session_ids=["s1"]) == 1
    moved = AgentSession.objects.get(pk="s1").last_seen_at
    assert moved > session.last_seen_at

    assert agent_session_touch(session_ids=["s1"]) == 0  # inside the window: nothing written
    assert agent_session_touch(session_ids=["s1"], now=moved + timedelta(seconds=SESSION_TOUCH_SECONDS - 1)) == 0
    assert AgentSession.objects.get(pk="s1").last_seen_at == moved


def test_a_touch_leaves_an_ended_session_ended_and_unmoved():
    agent, server = AgentFactory(), UpstreamServerFactory()
    session = seen("s1", agent, server, 3600, ended_at=timezone.now(), end_reason="closed by client")

    assert agent_session_touch(session_ids=["s1"]) == 0
    assert AgentSession.objects.get(pk="s1").last_seen_at == session.last_seen_at


def test_expiry_ends_only_open_sessions_idle_past_the_limit(settings):
    settings.BEHAVRY_MCP_SESSION_IDLE_SECONDS = 600
    agent, other, server = AgentFactory(), AgentFactory(), UpstreamServerFactory()
    lag = SESSION_TOUCH_SECONDS  # last_seen_at may trail a session's last request by this much
    seen("idle", agent, server, 600 + lag + 5, upstream_session_id="up-1", upstream_protocol_version="2025-11-25")
    seen("bridge-1-2-abc", agent, server, 600 + lag + 5, era="modern")  # a 2026 agent's bridge counts too
    seen("within-lag", agent, server, 600 + lag - 5)
    seen("busy", agent, server, 1)
    seen("others-busy", other, server, 1)
    seen("others-idle", other, server, 9000)
    closed = seen("closed", agent, server, 9000, ended_at=timezone.now() - timedelta(hours=1), end_reason="gone")

    ended = agent_session_expire_idle()

    assert {e.id for e in ended} == {"idle", "bridge-1-2-abc", "others-idle"}
    assert EndedSession("idle", server.pk, "up-1", "2025-11-25") in ended
    assert open_ids() == {"within-lag", "busy", "others-busy"}
    assert set(AgentSession.objects.filter(end_reason="idle").values_list("id", flat=True)) == {
        "idle",
        "bridge-1-2-abc",
        "others-idle",
    }
    assert AgentSession.objects.get(pk="closed").ended_at == closed.ended_at  # not ended twice
    assert agent_session_expire_idle() == []  # an overlapping run finds nothing left


def test_expiry_goes_in_batches_stalest_first(settings):
    settings.BEHAVRY_MCP_SESSION_IDLE_SECONDS = 60
    agent, server = AgentFactory(), UpstreamServerFactory()
    for n, age in enumerate((5000, 7000, 6000)):
        seen(f"s{n}", agent, server, age)

    assert [e.id for e in sorted(agent_session_expire_idle(limit=2), key=lambda e: e.id)] == ["s1", "s2"]
    assert [e.id for e in agent_session_expire_idle(limit=2)] == ["s0"]
    assert open_ids() == set()


def test_an_open_past_the_cap_evicts_the_least_recently_seen_of_that_agent_on_that_server(settings):
    settings.BEHAVRY_MCP_MAX_SESSIONS_PER_AGENT = 2
    agent, other = AgentFactory(), AgentFactory()
    server, elsewhere = UpstreamServerFactory(), UpstreamServerFactory()
    seen("oldest", agent, server, 500, upstream_session_id="up-old", upstream_protocol_version="2025-06-18")
    seen("older", agent, server, 400)
    seen("recent", agent, server, 10)
    seen("elsewhere", agent, elsewhere, 9000)
    for n in range(4):
        seen(f"others-{n}", other, server, 9000)

    session, evicted = agent_session_open(
        agent_id=agent.pk, server_id=server.pk, era="legacy", protocol_version="2025-11-25", client_info={}
    )

    assert evicted == [
        EndedSession("older", server.pk, "", ""),
        EndedSession("oldest", server.pk, "up-old", "2025-06-18"),
    ]
    assert set(AgentSession.objects.filter(end_reason="evicted").values_list("id", flat=True)) == {"oldest", "older"}
    assert open_ids() == {session.pk, "recent", "elsewhere", "others-0", "others-1", "others-2", "others-3"}


def test_an_open_within_the_cap_evicts_nothing_and_a_bridge_reopen_keeps_its_own_row(settings):
    settings.BEHAVRY_MCP_MAX_SESSIONS_PER_AGENT = 2
    agent, server = AgentFactory(), UpstreamServerFactory()
    seen("bridge-x", agent, server, 9000, era="modern", ended_at=timezone.now(), end_reason="idle")

    _session, evicted = agent_session_open(
        agent_id=agent.pk, server_id=server.pk, era="legacy", protocol_version="2025-11-25", client_info={}
    )
    assert evicted == []
    bridge, evicted = agent_session_open(
        agent_id=agent.pk,
        server_id=server.pk,
        era="modern",
        protocol_version="x",
        client_info={},
        session_id="bridge-x",
    )
    assert evicted == [] and bridge.is_open and AgentSession.objects.filter(ended_at__isnull=True).count() == 2
