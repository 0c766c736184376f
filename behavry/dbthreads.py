"""Running synchronous ORM code from the event loop: which thread it runs on.

On PostgreSQL, any of a small pool of threads (each with its own connection), so one call's
database step does not queue behind every other call's. SQLite keeps Channels' single database
thread, since it takes one writer at a time anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import threading
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import close_old_connections, connections

T = TypeVar("T")

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
