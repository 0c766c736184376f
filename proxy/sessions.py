"""Keeping a 2025-era session's `last_seen_at` current while it is used, cheaply, so that sessions
left behind (most clients go away without a DELETE) can be told from the ones in use:

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
from collections.abc import Collection, Coroutine
from datetime import timedelta
from typing import Any

from django.utils import timezone

from agents.models import AgentSession
from agents.services import SESSION_TOUCH_SECONDS, agent_session_touch
from behavry.dbthreads import on_db_thread
from proxy import inflight

logger = logging.getLogger("behavry.proxy")

TICK_SECONDS = SESSION_TOUCH_SECONDS / 2
_TOUCH_AGE = timedelta(seconds=SESSION_TOUCH_SECONDS)
TOUCH_CHUNK = 500  # session ids per UPDATE (SQLite caps the parameters of one statement)

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
