"""Holding an escalated call until a human decides, the deadline passes, or the agent gives up.

The agent's request is answered as SSE at once. While it waits the stream carries a `: keepalive`
comment and, if the request had a progressToken, a `notifications/progress` at least every
KEEPALIVE_SECONDS. The decision arrives on the channel layer group `escalation.<id>`; the row is
re-read at least every BEHAVRY_ESCALATION_RECHECK_SECONDS whatever the layer does (one batched
query per process, see _Watcher), so a lost message or a dead Redis costs at most that. No
database connection or transaction is held while waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any, TypeGuard

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.utils import timezone

from behavry.errors import Conflict
from escalations.models import Escalation, EscalationStatus
from escalations.notify import escalation_group
from escalations.services import escalation_cancel, escalation_claim_forward, escalation_expire, escalation_open
from policies.engine import Decision
from proxy.handlers import KEEPALIVE, McpRequest, Reply, _result, denial_result, forward_call, record, record_outcome

logger = logging.getLogger("behavry.proxy.hold")

KEEPALIVE_SECONDS = 10.0
_held = 0  # requests held in this process, capped by BEHAVRY_MAX_HELD_REQUESTS


def pending_result(escalation: Escalation) -> dict[str, Any]:
    text = (
        f"Approval pending: escalation {escalation.pk} is waiting for a human ({escalation.reason}). "
        "Retry the same call to keep waiting or to get the decision."
    )
    return {
        "content": [{"type": "text", "text": text}],
        "isError": True,
        "structuredContent": {
            "behavry": {
                "decision": "escalate",
                "policy_id": escalation.policy_id,
                "reason": escalation.reason,
                "escalation_id": escalation.pk,
            }
        },
    }


def decided_denial(escalation: Escalation) -> dict[str, Any]:
    if escalation.status == EscalationStatus.DENIED:
        reason = f"Escalation {escalation.pk} was denied by {escalation.decided_by}" + (
            f": {escalation.note}" if escalation.note else "."
        )
        policy_id = "escalation.denied"
    elif escalation.status == EscalationStatus.EXPIRED:
        reason, policy_id = f"Escalation {escalation.pk} expired without a decision.", "escalation.expired"
    elif escalation.status == EscalationStatus.APPROVED:
        reason = f"Escalation {escalation.pk} was approved and already carried out by another request."
        policy_id = "escalation.already_forwarded"
    else:
        reason = f"Escalation {escalation.pk} was cancelled: {escalation.note or 'no reason given'}"
        policy_id = "escalation.cancelled"
    return denial_result(Decision("deny", policy_id, reason), escalation_id=escalation.pk)


def _read(escalation_id: int) -> Escalation:
    return Escalation.objects.get(pk=escalation_id)


async def hold_for_approval(
    req: McpRequest,
    *,
    tool: str,
    arguments: dict[str, Any],
    action: str,
    resource: str,
    decision: Decision,
    request_id: str,
) -> Reply:
    """Open (or attach to) the escalation and return the SSE reply that waits on it."""
    msg_id = req.message["id"]
    escalation, _created = await database_sync_to_async(escalation_open)(
        agent_id=req.identity.agent_id,
        server=req.target.slug,
        tool=tool,
        action=action,
        resource=resource,
        arguments=arguments,
        policy_id=decision.policy_id,
        reason=decision.reason,
        risk_tier=req.identity.risk_tier,
        request_id=request_id,
        session=req.session.pk if req.session is not None else "",
    )
    if _held >= settings.BEHAVRY_MAX_HELD_REQUESTS:
        # At the cap, answer "pending" at once; the escalation stands and a retry attaches to it.
        return Reply(body=_result(req, msg_id, pending_result(escalation)))
    progress_token = ((req.message.get("params") or {}).get("_meta") or {}).get("progressToken")

    async def on_cancel() -> None:
        with contextlib.suppress(Conflict):  # already decided: nothing to cancel
            await database_sync_to_async(escalation_cancel)(
                escalation=escalation, reason="The agent cancelled the call."
            )

    return Reply(
        stream=_wait(req, escalation, tool, action, resource, request_id, progress_token),
        on_cancel=on_cancel,
        drain_on_disconnect=False,
    )


class _Watcher:
    """One per event loop: wakes held calls whose escalation changed.

    Two sources, both shared by every held call in the process:
    - one channel-layer channel that joins each held escalation's group and a single long-lived
      receive loop (cancelling a channels_redis receive every few seconds loses messages);
    - one query every RECHECK seconds over all held ids, so a lost message or a dead Redis costs
      at most that, at one query per process rather than one per held call.
    """

    def __init__(self):
        self.events: dict[int, set[asyncio.Event]] = {}
        self.rows: dict[int, Escalation] = {}  # decided rows fetched for waiters, taken by them
        self.dirty: set[int] = set()
        self.fetching: asyncio.Task | None = None
        self.layer = get_channel_layer()
        self.channel: str | None = None
        self.tasks: list[asyncio.Task] = []

    async def add(self, escalation_id: int, event: asyncio.Event) -> None:
        self.events.setdefault(escalation_id, set()).add(event)
        if not self.tasks or all(t.done() for t in self.tasks):
            self.tasks = [asyncio.ensure_future(self._poll()), asyncio.ensure_future(self._listen())]
        if self.layer is not None:
            try:
                if self.channel is None:
                    self.channel = await self.layer.new_channel()
                await self.layer.group_add(escalation_group(escalation_id), self.channel)
            except Exception:
                logger.warning(
                    "channel layer unavailable; escalation %s relies on re-reads", escalation_id, exc_info=True
                )

    async def remove(self, escalation_id: int, event: asyncio.Event) -> None:
        waiting = self.events.get(escalation_id)
        if waiting is None:
            return
        waiting.discard(event)
        if waiting:
            return
        del self.events[escalation_id]
        if self.layer is not None and self.channel is not None:
            try:
                await self.layer.group_discard(escalation_group(escalation_id), self.channel)
            except Exception:
                logger.debug("group_discard failed", exc_info=True)

    def wake(self, escalation_id: int) -> None:
        for event in self.events.get(escalation_id, ()):
            event.set()

    def mark(self, escalation_id: int) -> None:
        """A message says this escalation changed: fetch it (batched with others) and wake its waiters."""
        self.dirty.add(escalation_id)
        if self.fetching is None or self.fetching.done():
            self.fetching = asyncio.ensure_future(self._fetch())

    async def _fetch(self) -> None:
        await asyncio.sleep(0.02)  # a bulk decision sends many messages at once: read them together
        while self.dirty:
            ids, self.dirty = list(self.dirty), set()
            try:
                rows = await database_sync_to_async(_decided_rows)(ids)
            except Exception:
                logger.warning("escalation read failed; the periodic re-read covers it", exc_info=True)
                return
            self._deliver(rows)

    def _deliver(self, rows: dict[int, Escalation]) -> None:
        for escalation_id, row in rows.items():
            if escalation_id in self.events:
                self.rows[escalation_id] = row
                self.wake(escalation_id)

    async def _poll(self) -> None:
        while self.events:
            await asyncio.sleep(float(settings.BEHAVRY_ESCALATION_RECHECK_SECONDS))
            ids = list(self.events)
            try:
                rows = await database_sync_to_async(_decided_rows)(ids)
            except Exception:
                logger.warning("escalation re-read failed; retrying", exc_info=True)
                continue
            self._deliver(rows)

    async def _listen(self) -> None:
        while self.events and self.layer is not None:
            if self.channel is None:
                await asyncio.sleep(1)
                continue
            try:
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("channel layer receive failed; re-reads cover it", exc_info=True)
                await asyncio.sleep(1)
                continue
            if isinstance(message.get("id"), int):
                self.mark(message["id"])


def _decided_rows(ids: list[int]) -> dict[int, Escalation]:
    return {e.pk: e for e in Escalation.objects.filter(pk__in=ids).exclude(status=EscalationStatus.PENDING)}


_watchers: dict[int, _Watcher] = {}


def _watcher() -> _Watcher:
    loop_id = id(asyncio.get_running_loop())
    watcher = _watchers.get(loop_id)
    if watcher is None:
        watcher = _watchers[loop_id] = _Watcher()
    return watcher


async def _wait(
    req: McpRequest,
    escalation: Escalation,
    tool: str,
    action: str,
    resource: str,
    request_id: str,
    progress_token: Any,
) -> AsyncGenerator[Any, None]:
    """1. Register with the process's watcher. 2. Loop: act on the row (read only when woken);
    expire at the deadline; give up at max_hold_seconds; otherwise sleep until woken or the next
    keepalive. 3. Unregister."""
    global _held
    msg_id = req.message["id"]
    watcher = _watcher()
    woken = asyncio.Event()
    await watcher.add(escalation.pk, woken)
    started = time.monotonic()
    last_sign_of_life = started
    progress = 0
    max_hold = float(req.identity.max_hold_seconds)
    current = escalation
    _held += 1
    try:
        yield KEEPALIVE  # at once: some servers send the response head only with the first bytes
        while True:
            if current.status == EscalationStatus.APPROVED:
                if await database_sync_to_async(escalation_claim_forward)(escalation_id=current.pk):
                    forwarded = _forward_approved(req, current, tool, action, resource, progress_token, progress)
                    async for message in forwarded:
                        yield message
                    return
                yield _result(req, msg_id, decided_denial(current))
                return
            if current.status != EscalationStatus.PENDING:
                # The answer goes out first; the outcome (bookkeeping: the decision itself is
                # already audited) is recorded right after, so a bulk decision releases fast.
                yield _result(req, msg_id, decided_denial(current))
                await _record_held_outcome(req, tool, request_id, current.status, started)
                return
            now = timezone.now()
            if now >= current.deadline:
                try:
                    current = await database_sync_to_async(escalation_expire)(escalation=current)
                except Conflict:
                    current = await database_sync_to_async(_read)(escalation.pk)  # decided meanwhile
                    continue
                yield _result(req, msg_id, decided_denial(current))
                await _record_held_outcome(req, tool, request_id, current.status, started)
                return
            held_for = time.monotonic() - started
            if held_for >= max_hold:
                yield _result(req, msg_id, pending_result(current))
                await _record_held_outcome(req, tool, request_id, "pending", started)
                return
            timeout = min(
                (current.deadline - now).total_seconds(),
                max_hold - held_for,
                KEEPALIVE_SECONDS - (time.monotonic() - last_sign_of_life),
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), timeout=max(timeout, 0.01))
            if woken.is_set():
                woken.clear()
                current = (
                    watcher.rows.pop(escalation.pk) if escalation.pk in watcher.rows else None
                ) or await database_sync_to_async(_read)(escalation.pk)
                continue
            if time.monotonic() - last_sign_of_life >= KEEPALIVE_SECONDS - 0.05:
                last_sign_of_life = time.monotonic()
                yield KEEPALIVE
                if progress_token is not None:
                    progress += 1
                    yield {
                        "jsonrpc": "2.0",
                        "method": "notifications/progress",
                        "params": {
                            "progressToken": progress_token,
                            "progress": progress,
                            "message": f"Waiting for approval (escalation {escalation.pk})",
                        },
                    }
    finally:
        _held -= 1
        watcher.rows.pop(escalation.pk, None)
        await asyncio.shield(watcher.remove(escalation.pk, woken))


async def _forward_approved(
    req: McpRequest,
    escalation: Escalation,
    tool: str,
    action: str,
    resource: str,
    progress_token: Any,
    held_progress: int,
):
    """The approved call: audited as allowed under escalation.<id>, then forwarded like any other.
    Its progress continues the hold's on the agent's token (_ProgressAfterHold)."""
    import uuid

    request_id = uuid.uuid4().hex
    started = time.perf_counter()
    policy_id = f"escalation.{escalation.pk}"
    await record(
        req,
        kind="decision",
        tool=tool,
        action=action,
        resource=resource,
        decision="allow",
        policy_id=policy_id,
        reason=f"Approved by {escalation.decided_by}" + (f": {escalation.note}" if escalation.note else ""),
        request_id=request_id,
        arguments=(req.message.get("params") or {}).get("arguments") or {},
        details={"escalation_id": escalation.pk, "exception_id": escalation.exception_id},
    )
    reply = await forward_call(
        req, tool=tool, action=action, resource=resource, policy_id=policy_id, request_id=request_id, started=started
    )
    if reply.stream is None:
        yield reply.body
        if reply.after is not None:
            await asyncio.shield(reply.after)  # shielded: a hang-up now must not cancel the write
        return
    after_hold = _ProgressAfterHold(progress_token, held_progress)
    async for message in reply.stream:
        message = after_hold.rewrite(message)
        if message is not None:
            yield message


class _ProgressAfterHold:
    """The upstream's progress on the agent's token, moved past what the hold already sent there.

    The call goes upstream with the agent's own progressToken, and the upstream starts counting
    afresh; after the hold's 1..n that would send progress backwards on one token, which the spec
    forbids (progress MUST increase with each notification, in both eras). So each value, and its
    total, is shifted by n: the agent sees one count, and step k of a total T is still T - k from
    the end. A shifted value that would not exceed the last one sent (an upstream starting at 0
    lands on n) is dropped: losing one status line is better than breaking the rule. With no hold
    progress sent nothing changes, exactly as for a call that was never held."""

    def __init__(self, token: Any, held_progress: int):
        self.token = token
        self.offset = held_progress
        self.last: float = held_progress

    def rewrite(self, message: Any) -> Any:
        if self.offset == 0 or not isinstance(message, dict) or message.get("method") != "notifications/progress":
            return message
        params = message.get("params")
        if not isinstance(params, dict) or params.get("progressToken") != self.token:
            return message
        progress = params.get("progress")
        if not _is_number(progress):
            return message  # malformed upstream progress: passed on as it came, like any unheld call's
        shifted = self.offset + progress
        if shifted <= self.last:
            return None
        self.last = shifted
        params = {**params, "progress": shifted}
        total = params.get("total")
        if _is_number(total):
            params["total"] = self.offset + total
        return {**message, "params": params}


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


async def _record_held_outcome(req: McpRequest, tool: str, request_id: str, status: str, started: float) -> None:
    await record_outcome(
        req,
        tool=tool,
        decision="escalate",
        request_id=request_id,
        latency_ms=(time.monotonic() - started) * 1000,
        details={"status": status},
    )
