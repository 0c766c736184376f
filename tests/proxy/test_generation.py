"""The cache generation (proxy/generation.py): which changes move it, on both backends, and how a
process's watch of it is checked."""

import pytest
from django.db import connection, transaction

from agents.models import Agent, AgentToken, Role
from agents.services import agent_create, agent_suspend, agent_token_issue, agent_token_revoke
from behavry import dbthreads
from proxy import generation
from proxy.generation import GenerationWatch, install_cache_triggers, read_generation
from proxy.models import Tool, UpstreamServer
from tests.conftest import TEST_ACTOR, frozen_monotonic

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def clock(monkeypatch):
    return frozen_monotonic(monkeypatch, generation)


@pytest.fixture
def agent():
    return agent_create(name="gen-bot", by=TEST_ACTOR)


@pytest.fixture
def tool():
    server = UpstreamServer.objects.create(slug="gen", name="gen", url="http://127.0.0.1:9/mcp")
    return Tool.objects.create(server=server, name="read_file", definition_hash="h")


def moves(change) -> bool:
    before = read_generation()
    change()
    return read_generation() != before


# --- what moves it -------------------------------------------------------------------------------


def test_every_trigger_is_installed_by_migrate():
    assert install_cache_triggers() == 0  # all there already: nothing to create


def test_a_dropped_trigger_is_put_back(agent):
    """What post_migrate does after every migrate: a table rebuilt by a SQLite migration loses its
    triggers, and the next install restores them."""
    name = f"{generation.TRIGGER_PREFIX}agents_agent_u"
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TRIGGER {name}" + (" ON agents_agent" if connection.vendor == "postgresql" else ""))
    assert not moves(lambda: Agent.objects.filter(pk=agent.pk).update(status="suspended"))
    assert install_cache_triggers() == 1
    assert moves(lambda: Agent.objects.filter(pk=agent.pk).update(status="active"))


def test_an_agent_change_that_the_proxy_reads_moves_it(agent):
    assert moves(lambda: agent_suspend(agent=agent, reason="test", by=TEST_ACTOR))
    assert moves(lambda: Agent.objects.filter(pk=agent.pk).update(risk_tier="high"))
    assert moves(lambda: Agent.objects.filter(pk=agent.pk).update(max_hold_seconds=10))
    assert moves(lambda: Agent.objects.filter(pk=agent.pk).update(name="renamed"))
    assert moves(lambda: agent_create(name="another", by=TEST_ACTOR))


def test_changes_the_proxy_does_not_read_leave_it(agent, tool):
    """Risk recomputation rewrites scores all the time, and authentication moves last_used_at:
    neither may empty every process's caches."""
    token, _raw = agent_token_issue(agent=agent, by=TEST_ACTOR)
    assert not moves(lambda: Agent.objects.filter(pk=agent.pk).update(risk_score=42.0, description="x"))
    assert not moves(lambda: Agent.objects.filter(pk=agent.pk).update(risk_tier=agent.risk_tier))  # unchanged
    assert not moves(lambda: AgentToken.objects.filter(pk=token.pk).update(last_used_at="2026-01-01T00:00:00Z"))
    assert not moves(lambda: Tool.objects.filter(pk=tool.pk).update(last_seen_at="2026-01-01T00:00:00Z"))


def test_tokens_roles_upstreams_and_tools_move_it(agent, tool):
    """The outsider's view: a token revoked, a role taken away, an upstream disabled, a tool
    reclassified — each by the path an admin or a script would use."""
    token, _raw = agent_token_issue(agent=agent, by=TEST_ACTOR)
    assert moves(lambda: agent_token_revoke(token=token, by=TEST_ACTOR))
    role = Role.objects.create(name="readers")
    assert moves(lambda: agent.roles.add(role))
    assert moves(lambda: Role.objects.filter(pk=role.pk).update(name="writers"))
    assert moves(lambda: agent.roles.remove(role))
    assert moves(lambda: UpstreamServer.objects.filter(pk=tool.server_id).update(enabled=False))
    assert moves(lambda: Tool.objects.filter(pk=tool.pk).update(action_override="delete"))
    assert moves(lambda: Tool.objects.filter(pk=tool.pk).update(resource_argument="path"))
    assert moves(lambda: Tool.objects.filter(pk=tool.pk).delete())


def test_a_change_moves_it_only_when_it_commits(agent):
    before = read_generation()
    with pytest.raises(RuntimeError), transaction.atomic():
        Agent.objects.filter(pk=agent.pk).update(status="suspended")
        raise RuntimeError("rolled back")
    assert read_generation() == before


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_on_postgresql_it_moves_once_per_transaction_at_commit(agent):
    """Deferred to the commit: the counter row is locked only then, for a moment, so two
    transactions changing watched rows in opposite orders cannot deadlock over it."""
    other = agent_create(name="other", by=TEST_ACTOR)
    before = read_generation()
    with transaction.atomic():
        Agent.objects.filter(pk=agent.pk).update(risk_tier="high")
        Agent.objects.filter(pk=other.pk).update(risk_tier="high")
        assert read_generation() == before  # not yet
    assert read_generation() == before + 1


# --- the watch -----------------------------------------------------------------------------------


async def test_the_watch_serves_a_checked_generation_within_the_bound_and_nothing_after(clock):
    watch = GenerationWatch()
    assert watch.peek() is None  # never checked
    checked = await dbthreads.on_db_thread(watch.current)
    clock.now += generation.CHECK_AHEAD * generation.BOUND_SECONDS - 0.01
    assert watch.peek() == checked
    assert not dbthreads._refreshing  # no check yet
    clock.now += 0.01 + generation.BOUND_SECONDS * (1 - generation.CHECK_AHEAD)  # the bound, exactly
    assert watch.peek() is None


async def test_late_in_the_bound_a_peek_starts_one_background_check_that_sees_a_change(clock, agent):
    watch = GenerationWatch()
    checked = await dbthreads.on_db_thread(watch.current)
    await dbthreads.on_db_thread(agent_suspend, agent=agent, reason="test", by=TEST_ACTOR)
    clock.now += 0.8
    assert watch.peek() == checked and watch.peek() == checked  # still served; one check started
    assert len(dbthreads._refreshing) == 1
    await dbthreads.refreshes_settled()
    assert watch.peek() == checked + 1


def test_on_a_database_thread_current_checks_only_when_due(clock, monkeypatch, agent):
    watch = GenerationWatch()
    queries = []
    monkeypatch.setattr(generation, "read_generation", lambda: queries.append(1) or len(queries))
    assert watch.current() == 1
    clock.now += 0.9
    assert watch.current() == 1 and len(queries) == 1
    clock.now += 0.1
    assert watch.current() == 2
    watch.reset()
    assert watch.current() == 3


def test_a_database_that_cannot_be_read_raises(clock, monkeypatch):
    """The caller is on the tool-call path and fails closed (tests/proxy/test_fail_closed.py)."""

    def down():
        raise OSError("connection refused")

    monkeypatch.setattr(generation, "read_generation", down)
    with pytest.raises(OSError):
        GenerationWatch().current()


def test_a_changed_tool_schema_moves_it(tool):
    """Behavry sends a 2026-07-28 upstream the Mcp-Param-* headers a tool's schema asks for
    (proxy/upstream.py), from a cache this number keeps fresh."""
    schema = {"type": "object", "properties": {"region": {"type": "string", "x-mcp-header": "Region"}}}
    assert moves(lambda: Tool.objects.filter(pk=tool.pk).update(input_schema=schema))
    assert not moves(lambda: Tool.objects.filter(pk=tool.pk).update(input_schema=schema))  # the same again
