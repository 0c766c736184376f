"""The per-process caches of the tool-call path (proxy/identity.py): the 1 s bound that makes a
suspension or revocation apply on the next request, and their renewal in the background, so that
steady traffic never waits for a database thread."""

import asyncio
import logging

import pytest

from agents.services import agent_suspend, agent_token_revoke
from behavry import dbthreads
from policies import engine as engine_module
from proxy import classify as classify_module
from proxy import handlers, identity
from proxy.identity import cached_identity, cached_target, identity_for_token, target_for_slug
from tests.conftest import TEST_ACTOR, frozen_monotonic
from tests.proxy.conftest import mcp_client, run_in_thread

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def clock(monkeypatch):
    return frozen_monotonic(monkeypatch, identity)


def refreshes_running() -> int:
    return sum(1 for task in dbthreads._refreshing.values() if not task.done())


# --- TTLCache on its own -------------------------------------------------------------------------


def test_an_entry_is_served_for_its_lifetime_then_missed(clock):
    cache = identity.TTLCache("test", lambda: 1.0)
    cache.put("k", "v", cache.read_started())
    clock.now += 0.99
    assert cache.get("k") == (True, "v")
    clock.now += 0.01
    assert cache.get("k") == (False, None)


def test_an_entry_ages_from_the_start_of_its_read_not_its_end(clock):
    """A slow query cannot stretch the 1 s bound: what it read is as old as the read."""
    cache = identity.TTLCache("test", lambda: 1.0)
    started = cache.read_started()
    clock.now += 0.9  # the query took 0.9 s
    cache.put("k", "v", started)
    clock.now += 0.1
    assert cache.get("k") == (False, None)


def test_a_read_that_began_before_a_clear_is_not_stored(clock):
    cache = identity.TTLCache("test", lambda: 1.0)
    started = cache.read_started()
    cache.clear()  # e.g. an upstream's era was just detected
    cache.put("k", "stale", started)
    assert cache.get("k") == (False, None)


async def test_a_hit_starts_a_background_reload_only_late_in_its_lifetime(clock):
    cache = identity.TTLCache("test", lambda: 1.0)
    reloads = []
    cache.put("k", "v", cache.read_started())

    clock.now += identity.REFRESH_AHEAD - 0.01
    assert cache.get("k", reloads.append, "k") == (True, "v")
    await dbthreads.refreshes_settled()
    assert reloads == []

    clock.now += 0.02
    for _ in range(3):  # three hits while one reload runs: still one reload
        assert cache.get("k", reloads.append, "k") == (True, "v")
    assert refreshes_running() == 1
    await dbthreads.refreshes_settled()
    assert reloads == ["k"]


def test_off_the_event_loop_a_hit_starts_no_reload(clock):
    """A database thread reads through the cache itself; there is no loop to run a task on."""
    cache = identity.TTLCache("test", lambda: 1.0)
    reloads = []
    cache.put("k", "v", cache.read_started())
    clock.now += 0.9
    assert cache.get("k", reloads.append, "k") == (True, "v")
    assert reloads == [] and refreshes_running() == 0


async def test_a_failed_background_reload_is_logged_and_the_entry_expires_as_before(clock, caplog):
    cache = identity.TTLCache("test", lambda: 1.0)
    cache.put("k", "v", cache.read_started())

    def database_down(_key):
        raise OSError("connection refused")

    clock.now += 0.8
    with caplog.at_level(logging.WARNING, logger="behavry.proxy"):
        assert cache.get("k", database_down, "k") == (True, "v")
        await dbthreads.refreshes_settled()
    assert "background refresh of test failed" in caplog.text
    clock.now += 0.2
    assert cache.get("k", database_down, "k") == (False, None)  # the request path reads, and fails closed


# --- identities and upstreams ------------------------------------------------------------------------


async def test_a_suspension_reaches_a_busy_agent_through_the_background_reload(clock, agent, token):
    assert (await run_in_thread(identity_for_token, token)).active
    await run_in_thread(agent_suspend, agent=agent, reason="test", by=TEST_ACTOR)

    clock.now += 0.8  # within the bound the cached identity may still be served...
    hit, seen = cached_identity(token)
    assert hit and seen.active
    await dbthreads.refreshes_settled()
    hit, seen = cached_identity(token)  # ...and the reload it started has read the suspension
    assert hit and not seen.active

    clock.now += 0.5  # 1.3 s after the first read: the reload renewed the entry
    assert cached_identity(token)[0]


async def test_a_revoked_token_is_unknown_after_the_background_reload(clock, agent, token):
    """The outsider: a token revoked while its agent is busy stops working within the bound."""
    assert await run_in_thread(identity_for_token, token) is not None
    await run_in_thread(agent_token_revoke, token=await run_in_thread(lambda: agent.tokens.get()), by=TEST_ACTOR)
    clock.now += 0.8
    cached_identity(token)
    await dbthreads.refreshes_settled()
    assert cached_identity(token) == (True, None)


async def test_a_disabled_upstream_is_gone_after_the_background_reload(clock, demo_server):
    from proxy.services import upstream_server_update

    assert (await run_in_thread(target_for_slug, "demo")).id == demo_server.pk
    await run_in_thread(upstream_server_update, server=demo_server, enabled=False, by=TEST_ACTOR)
    clock.now += 0.8
    assert cached_target("demo")[1] is not None
    await dbthreads.refreshes_settled()
    assert cached_target("demo") == (True, None)


# --- end to end ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("starter_policies")
async def test_steady_traffic_never_waits_for_a_cache_refresh(behavry_url, demo_server, token, monkeypatch):
    """Calls every 0.1 s for 4 s cross the identity, upstream, catalog and policy lifetimes
    several times. Every decision is made on the event loop from the caches, while the caches are
    renewed behind the calls. (Lifetimes doubled, so that a slow machine's pause between two
    calls does not outlast the last quarter of one.)"""
    monkeypatch.setattr(identity, "CACHE_SECONDS", 2.0)
    monkeypatch.setattr(classify_module, "_CACHE_SECONDS", 2.0)
    monkeypatch.setattr(engine_module, "REFRESH_SECONDS", 1.0)
    reads = {"identity": 0, "tool": 0, "policy": 0}

    def counting(name, real):
        def read(*args):
            reads[name] += 1
            return real(*args)

        return read

    monkeypatch.setattr(identity, "_read_identity", counting("identity", identity._read_identity))
    monkeypatch.setattr(classify_module, "_read_row", counting("tool", classify_module._read_row))
    monkeypatch.setattr(engine_module.engine_cache, "check", counting("policy", engine_module.engine_cache.check))

    async with mcp_client(f"{behavry_url}/mcp/demo", token, "2026-07-28") as client:
        for _ in range(2):  # the first call to a new upstream detects its era, which empties the caches
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
