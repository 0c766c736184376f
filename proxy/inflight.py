"""Requests in flight, so a legacy `notifications/cancelled` stops the right one in any process.

Each request that can be cancelled registers an asyncio.Event under (session id, request id).
A cancel notification sets the event if this process holds the request; otherwise it is broadcast
on the channel layer, where every proxy process listens on one channel and checks its own table.

The same per-process channel carries other "whoever holds this, act on it" messages (see
`subscribe`); proxy/mrtr.py uses it to reach the process holding a call that waits for input.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from channels.layers import get_channel_layer

logger = logging.getLogger("behavry.proxy")

GROUP = "behavry.mcp.cancel"
_events: dict[tuple[str, str], asyncio.Event] = {}
_listeners: dict[int, asyncio.Task] = {}
_handlers: dict[str, Callable[[dict[str, Any]], Coroutine[Any, Any, None]]] = {}
_tasks: set[asyncio.Task] = set()


def subscribe(message_type: str, handler: Callable[[dict[str, Any]], Coroutine[Any, Any, None]]) -> None:
    """Run `handler` for each broadcast of `message_type` that reaches this process."""
    _handlers[message_type] = handler


async def broadcast(message: dict[str, Any]) -> bool:
    """Send `message` to every proxy process (this one included); False without a channel layer."""
    ensure_listening()
    layer = get_channel_layer()
    if layer is None:
        return False
    await layer.group_send(GROUP, message)
    return True


def _key(session_id: str, request_id: Any) -> tuple[str, str]:
    return session_id, json.dumps(request_id, sort_keys=True)


def register(session_id: str, request_id: Any, event: asyncio.Event) -> None:
    _events[_key(session_id, request_id)] = event
    ensure_listening()


def unregister(session_id: str, request_id: Any) -> None:
    _events.pop(_key(session_id, request_id), None)


def session_ids() -> set[str]:
    """Sessions with a request in flight in this process (proxy/sessions.py keeps them seen)."""
    return {session_id for session_id, _request in _events}


def cancel_local(session_id: str, request_id: Any) -> bool:
    event = _events.get(_key(session_id, request_id))
    if event is None:
        return False
    event.set()
    return True


async def cancel(session_id: str, request_id: Any) -> None:
    if cancel_local(session_id, request_id):
        return
    layer = get_channel_layer()
    if layer is not None:
        await layer.group_send(GROUP, {"type": "mcp.cancel", "session": session_id, "request": request_id})


GROUP_REFRESH_SECONDS = 3600


async def _stay_in_group(layer, channel: str) -> None:
    """Join again every hour: channels-redis drops group members after `group_expiry` (1 day), after
    which broadcasts (cancels, answers, resumes) would silently stop reaching this process."""
    while True:
        await asyncio.sleep(GROUP_REFRESH_SECONDS)
        try:
            await layer.group_add(GROUP, channel)
        except Exception:  # a Redis hiccup; the next hour tries again
            logger.exception("could not renew the process bus membership")


def ensure_listening() -> None:
    """Start this process's listener (once per event loop), so broadcasts from elsewhere reach it."""
    loop = asyncio.get_running_loop()
    task = _listeners.get(id(loop))
    if task is None or task.done():
        _listeners[id(loop)] = loop.create_task(_listen())


async def _listen() -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    channel = await layer.new_channel()
    await layer.group_add(GROUP, channel)
    refresh = asyncio.get_running_loop().create_task(_stay_in_group(layer, channel))
    _tasks.add(refresh)
    try:
        await _receive_forever(layer, channel)
    finally:
        refresh.cancel()
        _tasks.discard(refresh)
        with contextlib.suppress(Exception):  # else it stays a group member until group_expiry
            await layer.group_discard(GROUP, channel)


async def stop_listening() -> None:
    """End this event loop's listener, for a server stopping its loop while the process goes on
    (the test servers). channels-redis lets one loop at a time receive per process: a listener
    left behind on a stopped loop would lock out the next loop's listener."""
    task = _listeners.pop(id(asyncio.get_running_loop()), None)
    if task is not None:
        task.cancel()
        await asyncio.wait({task})


async def _receive_forever(layer, channel: str) -> None:
    while True:
        try:
            message = await layer.receive(channel)
        except asyncio.CancelledError:
            raise
        except Exception:  # a Redis hiccup must not end cancellation for the process
            logger.exception("cancel listener: receive failed; retrying")
            await asyncio.sleep(1)
            await layer.group_add(GROUP, channel)
            continue
        handler = _handlers.get(message.get("type", ""))
        if handler is not None:
            # Its own task: a slow handler (an upstream round trip) must not stall cancellations.
            task = asyncio.get_running_loop().create_task(handler(message))
            _tasks.add(task)
            task.add_done_callback(_tasks.discard)
            continue
        cancel_local(message.get("session", ""), message.get("request"))
