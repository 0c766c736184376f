"""The per-process caches of the tool-call path (proxy/identity.py): entries checked against the
cache generation (proxy/generation.py), which makes a suspension or revocation apply within the
1 s bound, and their renewal in the background, so that steady traffic never waits for a
database thread."""

import asyncio
import logging

import pytest

from agents.services import agent_suspend, agent_token_revoke
from behavry import dbthreads
from policies import engine as engine_module
from proxy import classify as classify_module
from proxy import generation, handlers, identity
from proxy.identity import cached_identity, cached_target, identity_for_token, target_for_slug
from tests.conftest import TEST_ACTOR, frozen_monotonic
from tests.proxy.conftest import mcp_client, run_in_thread

pytestmark = pytest.mark.django_db(transaction=True)

G = 7  # a cache generation, as the watch would have read it


@pytest.fixture
def clock(monkeypatch):
    return frozen_monotonic(monkeypatch, identity, generation)


def refreshes_running() -> int:
    return sum(1 for task in dbthreads._refreshing.values() if not task.done())


def started(clock, gen: int = G, clears: int = 0) -> tuple[float, int, int]:
    """What TTLCache.read_started() returns, without asking the database for the generation."""
    return clock.now, gen, clears


# --- TTLCache on its own -------------------------------------------------------------------------


def test_an_entry_is_served_while_its_generation_is_current(clock):
    cache = identity.TTLCache("test", lambda: 60.0)
    cache.put("k", "v", started(clock))
    clock.now += 30  # far past the old one-second lifetime: the generation vouches for it
    assert cache.get("k", G) == (True, "v")
    assert cache.get("k", G + 1) == (False, None)  # something changed since it was read
    assert cache.get("k", None) == (False, None)  # the generation is unchecked for too long


def test_an_entry_is_served_for_its_lifetime_then_missed(clock):
    cache = identity.TTLCache("test", lambda: 1.0)
    cache.put("k", "v", started(clock))
    clock.now += 0.99
    assert cache.get("k", G) == (True, "v")
    clock.now += 0.01
    assert cache.get("k", G) == (False, None)


def test_an_entry_ages_from_the_start_of_its_read_not_its_end(clock):
    """A slow query cannot stretch an entry's life: what it read is as old as the read."""
    cache = identity.TTLCache("test", lambda: 1.0)
    begun = started(clock)
    clock.now += 0.9  # the query took 0.9 s
    cache.put("k", "v", begun)
    clock.now += 0.1
    assert cache.get("k", G) == (False, None)


def test_a_read_that_began_before_a_clear_is_not_stored(clock):
    cache = identity.TTLCache("test", lambda: 1.0)
    begun = started(clock)
    cache.clear()  # e.g. an upstream's era was just detected
    cache.put("k", "stale", begun)
    assert cache.get("k", G) == (False, None)


def test_read_started_tags_a_read_with_the_generation_checked_before_it(clock):
    """The tag comes from a check that ended before the read began, so what the read finds is at
    least as new as its tag: a change after the check moves the generation and the entry misses."""
    cache = identity.TTLCache("test", lambda: 60.0)
    before = generation.read_generation()
    begun = cache.read_started()  # the watch was reset by the autouse fixture: this checks
    assert begun[1] == before
    cache.put("k", "v", begun)
    assert cache.get("k", generation.generation_watch.current()) == (True, "v")


async def test_a_hit_starts_a_background_reload_only_late_in_its_lifetime(clock):
    cache = identity.TTLCache("test", lambda: 1.0, refresh_spread=0)
    reloads = []
    cache.put("k", "v", started(clock))

    clock.now += identity.REFRESH_AHEAD - 0.01
    assert cache.get("k", G, reloads.append, "k") == (True, "v")
    await dbthreads.refreshes_settled()
    assert reloads == []

    clock.now += 0.02
    for _ in range(3):  # three hits while one reload runs: still one reload
        assert cache.get("k", G, reloads.append, "k") == (True, "v")
    assert refreshes_running() == 1
    await dbthreads.refreshes_settled()
    assert reloads == ["k"]


async def test_entries_read_together_are_reloaded_over_a_spread_of_their_lifetime(clock):
    """A fleet's entries are read in the same second (first calls, or after the generation moved).
    Their background re-reads must not all come in the same second again 45 s later."""
    cache = identity.TTLCache("test", lambda: 1.0)
    keys = [f"agent-{n}" for n in range(200)]
    for key in keys:
        cache.put(key, "v", started(clock))
    reloads: list[str] = []

    def reload(key: str) -> None:  # stores what it read, as the real ones do
        reloads.append(key)
        cache.put(key, "v", started(clock))

    def hit_all() -> None:
        for key in keys:
            assert cache.get(key, G, reload, key) == (True, "v")

    clock.now += identity.REFRESH_AHEAD - identity.REFRESH_SPREAD - 0.01
    hit_all()
    await dbthreads.refreshes_settled()
    assert reloads == []  # nobody before the earliest re-read point

    clock.now += identity.REFRESH_SPREAD / 2 + 0.01  # the middle of the spread
    hit_all()
    await dbthreads.refreshes_settled()
    early = list(reloads)
    assert 40 < len(early) < 160  # about half (uniform): spread, not all at once

    clock.now += identity.REFRESH_SPREAD / 2
    reloads.clear()
    hit_all()
    await dbthreads.refreshes_settled()
    assert sorted(early + reloads) == sorted(keys)  # the rest by REFRESH_AHEAD, each key once


def test_off_the_event_loop_a_hit_starts_no_reload(clock):
    """A database thread reads through the cache itself; there is no loop to run a task on."""
    cache = identity.TTLCache("test", lambda: 1.0)
    reloads = []
    cache.put("k", "v", started(clock))
    clock.now += 0.9
    assert cache.get("k", G, reloads.append, "k") == (True, "v")
    assert reloads == [] and refreshes_running() == 0


async def test_a_failed_background_reload_is_logged_and_the_entry_expires_as_before(clock, caplog):
    cache = identity.TTLCache("test", lambda: 1.0)
    cache.put("k", "v", started(clock))

    def database_down(_key):
        raise OSError("connection refused")

    clock.now += 0.8
    with caplog.at_level(logging.WARNING, logger="behavry.proxy"):
        assert cache.get("k", G, database_down, "k") == (True, "v")
        await dbthreads.refreshes_settled()
    assert "background refresh of test failed" in caplog.text
    clock.now += 0.2
    assert cache.get("k", G, database_down, "k") == (False, None)  # the request path reads, and fails closed


# --- identities and upstreams ------------------------------------------------------------------------


async def test_a_suspension_reaches_a_busy_agent_through_the_generation_check(clock, agent, token):
    assert (await run_in_thread(identity_for_token, token)).active
    await run_in_thread(agent_suspend, agent=agent, reason="test", by=TEST_ACTOR)

    clock.now += 0.8  # within the bound the cached identity may still be served...
    hit, seen = cached_identity(token)
    assert hit and seen.active
    await dbthreads.refreshes_settled()  # ...and the check it started saw the generation move,
    assert cached_identity(token) == (False, None)  # so the entry is a miss: read again
    assert not (await run_in_thread(identity_for_token, token)).active
    hit, seen = cached_identity(token)
    assert hit and not seen.active


async def test_an_unchecked_generation_serves_nothing_past_the_bound(clock, agent, token):
    await run_in_thread(identity_for_token, token)
    clock.now += generation.BOUND_SECONDS  # no call checked the generation in the meantime
    assert cached_identity(token) == (False, None)
    assert refreshes_running() == 0  # the request path checks, on its database thread


async def test_an_agent_quiet_for_longer_than_the_bound_is_not_read_again(clock, agent, token, monkeypatch):
    """The point of the generation: when nothing changed, an agent that calls every few seconds
    costs one cheap check of the generation, not a read of its token, agent and roles."""
    await run_in_thread(identity_for_token, token)
    reads = []
    real = identity._read_identity
    monkeypatch.setattr(identity, "_read_identity", lambda *args: reads.append(args) or real(*args))
    checks_before = await run_in_thread(generation.read_generation)
    for _ in range(3):
        clock.now += 5
        assert cached_identity(token) == (False, None)  # the loop cannot vouch for it...
        assert (await run_in_thread(identity_for_token, token)).active  # ...its thread checks, and hits
        assert cached_identity(token)[0]
    assert reads == [] and await run_in_thread(generation.read_generation) == checks_before


async def test_a_revoked_token_is_unknown_after_the_generation_check(clock, agent, token):
    """The outsider: a token revoked while its agent is busy stops working within the bound."""
    assert await run_in_thread(identity_for_token, token) is not None
    await run_in_thread(agent_token_revoke, token=await run_in_thread(lambda: agent.tokens.get()), by=TEST_ACTOR)
    clock.now += 0.8
    assert cached_identity(token)[1] is not None
    await dbthreads.refreshes_settled()
    assert cached_identity(token) == (False, None)
    assert await run_in_thread(identity_for_token, token) is None
    assert cached_identity(token) == (True, None)


async def test_a_suspension_by_a_bulk_update_reaches_the_cache(clock, agent, token):
    """QuerySet.update() (the admin's bulk actions, an operator's script) calls no service: the
    trigger moves the generation all the same."""
    from agents.models import Agent

    await run_in_thread(identity_for_token, token)
    await run_in_thread(lambda: Agent.objects.filter(pk=agent.pk).update(status="suspended"))
    clock.now += 0.8
    cached_identity(token)
    await dbthreads.refreshes_settled()
    assert cached_identity(token) == (False, None)
    assert not (await run_in_thread(identity_for_token, token)).active


async def test_a_disabled_upstream_is_gone_after_the_generation_check(clock, demo_server):
    from proxy.services import upstream_server_update

    assert (await run_in_thread(target_for_slug, "demo")).id == demo_server.pk
    await run_in_thread(upstream_server_update, server=demo_server, enabled=False, by=TEST_ACTOR)
    clock.now += 0.8
    assert cached_target("demo")[1] is not None
    await dbthreads.refreshes_settled()
    assert cached_target("demo") == (False, None)
    assert await run_in_thread(target_for_slug, "demo") is None
    assert cached_target("demo") == (True, None)


# --- end to end ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("starter_policies")
async def test_steady_traffic_never_waits_for_a_cache_refresh(behavry_url, demo_server, token, monkeypatch):
    """Calls every 0.1 s for 4 s cross the identity, upstream and catalog lifetimes (made 2 s
    here) and the policy and generation checks' several times. Every decision is made on the event
    loop from the caches, while the caches are renewed and checked behind the calls. (The policy
    check's interval doubled, so that a slow machine's pause between two calls does not outlast
    the last quarter of one.)"""
    monkeypatch.setattr(identity, "CACHE_SECONDS", 2.0)
    monkeypatch.setattr(classify_module, "_CACHE_SECONDS", 2.0)
    monkeypatch.setattr(engine_module, "REFRESH_SECONDS", 1.0)
    reads = {"identity": 0, "tool": 0, "policy": 0, "generation": 0}

    def counting(name, real):
        def read(*args):
            reads[name] += 1
            return real(*args)

        return read

    monkeypatch.setattr(identity, "_read_identity", counting("identity", identity._read_identity))
    monkeypatch.setattr(classify_module, "_read_row", counting("tool", classify_module._read_row))
    monkeypatch.setattr(engine_module.engine_cache, "check", counting("policy", engine_module.engine_cache.check))
    monkeypatch.setattr(generation, "read_generation", counting("generation", generation.read_generation))

    async with mcp_client(f"{behavry_url}/mcp/demo", token, "2026-07-28") as client:
        for _ in range(2):  # the first call to a new upstream detects its era, which empties the caches
            assert not (await client.call_tool("echo", {"message": "warm"})).is_error
        # The first contact's writes (era, catalog) moved the generation; once the watch has seen
        # the last of them (a check within the bound), the caches fill again and traffic is steady.
        await asyncio.sleep(generation.BOUND_SECONDS)
        for _ in range(2):
            assert not (await client.call_tool("echo", {"message": "warm"})).is_error
        real = handlers.decide_tool_call
        paths = []

        def recording(**kwargs):
            outcome = real(**kwargs)
            paths.append("loop" if kwargs.get("cached_only") and outcome is not None else "database thread")
            return outcome

        monkeypatch.setattr(handlers, "decide_tool_call", recording)
        before = dict(reads)
        for i in range(40):
            assert not (await client.call_tool("echo", {"message": str(i)})).is_error
            await asyncio.sleep(0.1)
    assert paths == ["loop"] * 40
    assert all(reads[name] - before[name] >= 2 for name in reads), (before, reads)
