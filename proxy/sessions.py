"""The proxy's half of 2025-era session upkeep: keeping `last_seen_at` current, and ending the
upstream sessions behind the ones Behavry ends (idle expiry, the per-agent cap).

The beat job agents.tasks.expire_idle_sessions ends sessions whose `last_seen_at` is older than
BEHAVRY_MCP_SESSION_IDLE_SECONDS (plus SESSION_TOUCH_SECONDS, what `last_seen_at` may lag). For
that to spare the sessions in use:

1. At the start of each request on a session (a POST, a GET stream, a 2026 agent's call carried on
   its bridge session) `touch_if_due` compares the row the request already read with the clock.
   Only when SESSION_TOUCH_SECONDS have passed does it start an UPDATE, in the background: a call
   costs one comparison, a busy session one UPDATE a minute, none of it on the request's path.
2. A ticker per event loop, every SESSION_TOUCH_SECONDS / 2, touches in one UPDATE the sessions
   that have a request in flight (proxy/inflight.py) or a GET stream open in this process: a long
   tool call, a held escalation or a quiet GET stream keeps its session although no request
   comes. It stops when a tick finds nothing to touch; the next request starts it again.

So `last_seen_at` lags a session's use by at most SESSION_TOUCH_SECONDS plus a tick, and a stateless
(2026-07-28) call to a 2026-07-28 upstream does none of this: it has no session.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Collection, Coroutine, Iterable
from datetime import timedelta
from typing import Any

from django.utils import timezone

from agents.models import AgentSession
from agents.services import SESSION_TOUCH_SECONDS, EndedSession, agent_session_touch
from behavry.dbthreads import on_db_thread
from proxy import inflight
from proxy.identity import upstream_target
from proxy.models import UpstreamServer
from proxy.upstream import UpstreamTarget, legacy_terminate, pools_discard_for_loop

logger = logging.getLogger("behavry.proxy")

TICK_SECONDS = SESSION_TOUCH_SECONDS / 2
_TOUCH_AGE = timedelta(seconds=SESSION_TOUCH_SECONDS)
TOUCH_CHUNK = 500  # session ids per UPDATE (SQLite caps the parameters of one statement)
# The beat job's upstream DELETEs: this many at once, for at most this long per batch. Whatever is
# left expires on the upstream by itself (the DELETE is a courtesy, the session is already ended).
UPSTREAM_END_CONCURRENCY = 16
UPSTREAM_END_BUDGET_SECONDS = 30.0

# GET streams open in this process, per session id.
_streams: collections.Counter[str] = collections.Counter()
# Sessions whose touch is running: requests that read the same stale row start one UPDATE, not one each.
_touching: set[str] = set()
_tickers: dict[int, asyncio.Task] = {}
_tasks: set[asyncio.Task] = set()


def touch_if_due(session: AgentSession) -> None:
    """Move the session's `last_seen_at` in the background if the row just read is stale; from the loop."""
    loop = asyncio.get_running_loop()
    ticker = _tickers.get(id(loop))
    if ticker is None or ticker.done():
        _tickers[id(loop)] = loop.create_task(_tick())
    session_id = session.pk
    if session_id in _touching or timezone.now() - session.last_seen_at < _TOUCH_AGE:
        return
    _touching.add(session_id)
    _spawn(_touch([session_id]), lambda _task: _touching.discard(session_id))


def stream_opened(session_id: str) -> None:
    _streams[session_id] += 1


def stream_closed(session_id: str) -> None:
    _streams[session_id] -= 1
    if not _streams[session_id]:
        del _streams[session_id]


def in_use() -> set[str]:
    """Sessions with a request in flight or a GET stream open in this process."""
    return inflight.session_ids() | _streams.keys()


async def _tick() -> None:
    while True:
        await asyncio.sleep(TICK_SECONDS)
        ids = list(in_use())
        if not ids:
            return
        for start in range(0, len(ids), TOUCH_CHUNK):
            await _touch(ids[start : start + TOUCH_CHUNK])


async def stop_ticking() -> None:
    """End this loop's ticker (the test servers, which stop their loop while the process goes on)."""
    task = _tickers.pop(id(asyncio.get_running_loop()), None)
    if task is not None:
        task.cancel()
        await asyncio.wait({task})


async def _touch(session_ids: Collection[str]) -> None:
    try:
        await on_db_thread(agent_session_touch, session_ids=session_ids)
    except Exception:  # the next request or tick tries again; nothing waits on this
        logger.warning("could not move last_seen_at of %d session(s)", len(session_ids), exc_info=True)


def _spawn(coro: Coroutine[Any, Any, None], done=None) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    if done is not None:
        task.add_done_callback(done)


# --- ending upstream sessions ------------------------------------------------------------------


def end_upstream_soon(target: UpstreamTarget, ended: Iterable[EndedSession]) -> None:
    """Best-effort DELETE, in the background, of the upstream sessions behind sessions just ended on
    `target` (evicted at initialize); from the loop, as the agent's own DELETE does it."""
    for session in ended:
        if session.upstream_session_id and session.server_id == target.id:
            _spawn(legacy_terminate(target, session.upstream_session_id, session.upstream_protocol_version))


def end_upstream_blocking(ended: Collection[EndedSession]) -> int:
    """Best-effort DELETE of the upstream sessions behind `ended`, from a thread without an event
    loop (the beat job's worker); returns how many were tried. It runs a loop of its own for the
    length of the DELETEs, with the proxy's upstream client (same headers, credentials, timeouts
    as the agent's DELETE), and drops that loop's connection pools at the end."""
    pending = [session for session in ended if session.upstream_session_id]
    if not pending:
        return 0
    servers = UpstreamServer.objects.filter(pk__in={session.server_id for session in pending}, enabled=True)
    targets = {server.pk: upstream_target(server) for server in servers}
    jobs = [(targets[s.server_id], s) for s in pending if s.server_id in targets]  # a disabled one: no DELETE
    if jobs:
        asyncio.run(_end_all(jobs))
    return len(jobs)


async def _end_all(jobs: list[tuple[UpstreamTarget, EndedSession]]) -> None:
    gate = asyncio.Semaphore(UPSTREAM_END_CONCURRENCY)

    async def end(target: UpstreamTarget, session: EndedSession) -> None:
        async with gate:
            await legacy_terminate(target, session.upstream_session_id, session.upstream_protocol_version)

    try:
        async with asyncio.timeout(UPSTREAM_END_BUDGET_SECONDS):
            await asyncio.gather(*(end(target, session) for target, session in jobs))
    except TimeoutError:
        logger.info(
            "upstream DELETEs of ended sessions ran past %s s; the rest expire upstream", UPSTREAM_END_BUDGET_SECONDS
        )
    finally:
        pools_discard_for_loop()
