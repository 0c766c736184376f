"""Running synchronous ORM code from the event loop: which thread it runs on.

On PostgreSQL, any of a small pool of threads (each with its own connection), so one call's
database step does not queue behind every other call's. SQLite keeps Channels' single database
thread, since it takes one writer at a time anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import threading
from collections.abc import Callable, Hashable
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import close_old_connections, connections

T = TypeVar("T")

logger = logging.getLogger("behavry.proxy")

PARALLEL_DB = settings.DATABASES["default"]["ENGINE"].endswith("postgresql")
# Sized like asyncio's default executor (which database_sync_to_async(thread_sensitive=False)
# used before): at most this many PostgreSQL connections per process from these threads. The
# event loop's own connections (behavry/pgpool.py) use the same bound.
DB_THREADS = min(32, (os.cpu_count() or 1) + 4)
_DB_POOL = ThreadPoolExecutor(max_workers=DB_THREADS, thread_name_prefix="behavry-db")


async def on_db_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` on a database thread, awaited from the event loop."""
    if not PARALLEL_DB:  # read at call time: bench/proxy_overhead.py switches it for its SQL trace
        return await database_sync_to_async(fn)(*args, **kwargs)
    return await _in_db_pool(fn, args, kwargs)


async def _in_db_pool(fn: Callable[..., T], args: tuple, kwargs: dict[str, Any]) -> T:
    """What database_sync_to_async(thread_sensitive=False) does, without building an asgiref
    wrapper per call: measured 181 against 94 microseconds of CPU per hop.
    Stale connections are closed before and after, as Django's request cycle would. The thread
    sees a copy of the caller's contextvars and sends none back; asgiref `Local` values (active
    timezone, translation) do not reach it: the functions run here use neither."""
    # submit + wrap_future rather than loop.run_in_executor, whose coroutine-function check on the
    # partial cost another ~30 microseconds.
    future = _DB_POOL.submit(contextvars.copy_context().run, _run_with_connection_upkeep, fn, args, kwargs)
    return await asyncio.wrap_future(future)


def close_thread_connections(timeout: float = 10) -> None:
    """Close the Django connections every database thread holds (tests, before the test database
    is dropped). Each thread takes exactly one closing job: the jobs wait for each other."""
    threads = len(_DB_POOL._threads)
    if not threads:
        return
    barrier = threading.Barrier(threads, timeout=timeout)

    def close() -> None:
        connections.close_all()
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait()

    futures.wait([_DB_POOL.submit(close) for _ in range(threads)], timeout=timeout)


def _run_with_connection_upkeep(fn: Callable[..., T], args: tuple, kwargs: dict[str, Any]) -> T:
    close_old_connections()
    try:
        return fn(*args, **kwargs)
    finally:
        close_old_connections()


# key -> the background refresh running for it (refresh_ahead). Only refreshes in flight are kept.
_refreshing: dict[tuple[Hashable, ...], asyncio.Task] = {}


def refresh_ahead(key: tuple[Hashable, ...], fn: Callable[..., Any], *args: Any) -> None:
    """Run `fn(*args)` on a database thread in the background, unless a refresh of `key` is
    already running on this event loop; called from the loop, returns at once. `key[0]` names
    the cache in logs, the rest identifies the entry.

    For the per-process caches the tool-call path reads (proxy/identity.py, proxy/classify.py,
    policies/engine.py): a hit late in its lifetime is still served, and this re-reads it, so
    that under steady traffic no request waits for a database thread to renew a cache. Only
    entries that nobody used for a quarter of a lifetime are read on the request path. A failed refresh
    is logged; the entry then expires and the request path reads it itself, failing closed if the
    database is down, as it would without this."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # on a database thread: the caller reads through the cache itself
    running = _refreshing.get(key)
    if running is not None and not running.done() and running.get_loop() is loop:
        return
    task = loop.create_task(_refresh(key, fn, args))
    _refreshing[key] = task
    task.add_done_callback(functools.partial(_refresh_done, key))


async def _refresh(key: tuple[Hashable, ...], fn: Callable[..., Any], args: tuple) -> None:
    try:
        await on_db_thread(fn, *args)
    except Exception:
        logger.warning("background refresh of %s failed; it is read again when it expires", key[0], exc_info=True)


def _refresh_done(key: tuple[Hashable, ...], task: asyncio.Task) -> None:
    if _refreshing.get(key) is task:
        del _refreshing[key]


async def refreshes_settled() -> None:
    """Wait for the background refreshes running on this loop (tests)."""
    loop = asyncio.get_running_loop()
    running = [task for task in _refreshing.values() if task.get_loop() is loop]
    if running:
        await asyncio.wait(running)
