"""The idle-session expiry job, against a real 2025-era upstream for the DELETE it sends."""

from datetime import timedelta

import httpx
import pytest
from django.utils import timezone

from agents.models import AgentSession
from agents.tasks import expire_idle_sessions, purge_ended_sessions
from behavry.celery import app as celery_app
from tests.factories import AgentFactory, AgentSessionFactory, UpstreamServerFactory

pytestmark = pytest.mark.django_db

ACCEPT = "application/json, text/event-stream"
VERSION = "2025-11-25"


def upstream_session(url):
    """A session opened on the upstream directly, as Behavry opens one behind an agent's session."""
    params = {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    init = httpx.post(
        url, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}, headers={"Accept": ACCEPT}
    )
    session_id = init.headers["mcp-session-id"]
    httpx.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=on(session_id))
    return session_id


def on(session_id):
    return {"Accept": ACCEPT, "Mcp-Session-Id": session_id, "MCP-Protocol-Version": VERSION}


def upstream_knows(url, session_id):
    listed = httpx.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers=on(session_id))
    return listed.status_code == 200


def test_beat_runs_the_session_expiry_every_minute():
    entry = celery_app.conf.beat_schedule["session-expiry"]

    assert entry == {"task": "agents.tasks.expire_idle_sessions", "schedule": 60.0}
    assert celery_app.tasks[entry["task"]].name == expire_idle_sessions.name


def test_it_ends_idle_sessions_and_deletes_the_upstream_sessions_behind_them(settings, legacy_upstream):
    settings.BEHAVRY_MCP_SESSION_IDLE_SECONDS = 60
    agent, server = AgentFactory(), UpstreamServerFactory(url=legacy_upstream)
    idle_up, busy_up = upstream_session(legacy_upstream), upstream_session(legacy_upstream)
    long_ago = timezone.now() - timedelta(hours=2)
    for session_id, upstream_id, last_seen in (("idle", idle_up, long_ago), ("busy", busy_up, timezone.now())):
        AgentSessionFactory(
            id=session_id,
            agent=agent,
            server=server,
            upstream_session_id=upstream_id,
            upstream_protocol_version=VERSION,
            last_seen_at=last_seen,
        )
    assert upstream_knows(legacy_upstream, idle_up)

    assert expire_idle_sessions() == 1

    assert AgentSession.objects.get(pk="idle").end_reason == "idle"
    assert AgentSession.objects.get(pk="busy").is_open
    assert not upstream_knows(legacy_upstream, idle_up)
    assert upstream_knows(legacy_upstream, busy_up)


def test_it_ends_sessions_on_an_unreachable_or_disabled_upstream_all_the_same(settings):
    settings.BEHAVRY_MCP_SESSION_IDLE_SECONDS = 60
    agent = AgentFactory()
    down = UpstreamServerFactory(url="http://127.0.0.1:9/mcp", connect_timeout=1)
    disabled = UpstreamServerFactory(enabled=False)
    long_ago = timezone.now() - timedelta(hours=2)
    for session_id, server in (("on-down", down), ("on-disabled", disabled)):
        AgentSessionFactory(id=session_id, agent=agent, server=server, upstream_session_id="up", last_seen_at=long_ago)

    assert expire_idle_sessions() == 2
    assert set(AgentSession.objects.values_list("end_reason", flat=True)) == {"idle"}


def test_beat_runs_the_session_retention_hourly():
    entry = celery_app.conf.beat_schedule["session-retention"]
    assert (entry["task"], entry["schedule"]) == ("agents.tasks.purge_ended_sessions", 3600.0)


def test_retention_deletes_only_sessions_ended_long_enough_ago(settings, monkeypatch):
    settings.BEHAVRY_MCP_SESSION_RETENTION_DAYS = 30
    monkeypatch.setattr("agents.tasks.SESSION_EXPIRY_BATCH", 2)  # several batches in one run
    now = timezone.now()
    agent, other = AgentFactory(), AgentFactory()
    server = UpstreamServerFactory()

    def session(owner, ended_days_ago):
        ended = None if ended_days_ago is None else now - timedelta(days=ended_days_ago)
        return AgentSessionFactory(agent=owner, server=server, last_seen_at=now - timedelta(days=90), ended_at=ended)

    old = [session(agent, 31), session(agent, 45), session(other, 60), session(other, 31)]
    kept = [session(agent, 29), session(other, 1), session(agent, None), session(other, None)]

    assert purge_ended_sessions() == 4
    remaining = set(AgentSession.objects.values_list("pk", flat=True))
    assert remaining == {s.pk for s in kept}  # open ones (old as they are) and recently ended ones stay
    assert not remaining & {s.pk for s in old}
    assert purge_ended_sessions() == 0
