"""The policy engine: compile enabled rules into an index, then decide calls against it.

Combining, as in Cedar and IAM:
1. any matching enforce-mode deny wins;
2. otherwise any matching escalate, which an exact active exception turns into allow;
3. otherwise any matching allow;
4. otherwise `default.deny`.
Among rules of the winning effect, the highest priority (then lowest id) names the decision.
Shadow-mode rules are evaluated and reported as "would have" entries; they never decide.

Rules are indexed by (server, tool) when their globs are literal, so a decision looks at the rules
that could match this call rather than all of them. The trace lists every rule looked at and
which matcher failed; rules the index skipped are counted.
"""

from __future__ import annotations

import fnmatch
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from django.utils import timezone

DEFAULT_DENY = "default.deny"
# How often a process checks the policy version. A database thread checks before using an engine
# older than this; the event loop goes on using one up to twice as old while a check runs in the
# background from 1.5 times as old (_EngineCache.peek). Either way, changes apply within 1 s.
REFRESH_SECONDS = 0.5
_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_MISSING = object()


class PolicyEngineError(RuntimeError):
    """The engine could not load or evaluate; callers deny with system.fail_closed."""


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a decision is about. `agent_id` None means an unknown agent (simulations)."""

    agent_id: int | None
    server: str
    tool: str
    action: str = "other"
    resource: str = ""
    arguments: dict[str, Any] = field(default_factory=dict)
    roles: frozenset[str] = frozenset()
    risk_tier: str = "low"
    now: datetime | None = None


@dataclass
class Decision:
    decision: str  # allow | deny | escalate
    policy_id: str
    reason: str
    trace: list[dict[str, Any]] = field(default_factory=list)
    shadow: list[dict[str, Any]] = field(default_factory=list)
    shadow_decision: str | None = None
    exception_id: int | None = None
    rules_total: int = 0
    rules_skipped: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "policy_id": self.policy_id,
            "reason": self.reason,
            "trace": self.trace,
            "shadow": self.shadow,
            "shadow_decision": self.shadow_decision,
            "exception_id": self.exception_id,
            "rules_total": self.rules_total,
            "rules_skipped_by_index": self.rules_skipped,
        }


def _has_wildcard(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


class _GlobSet:
    """Literal strings by set lookup, wildcard globs through one compiled regex."""

    __slots__ = ("literals", "regex")

    def __init__(self, patterns: Iterable[str]):
        patterns = list(patterns)
        self.literals = frozenset(p for p in patterns if not _has_wildcard(p))
        wild = [fnmatch.translate(p) for p in patterns if _has_wildcard(p)]
        self.regex = re.compile("|".join(f"(?:{w})" for w in wild)) if wild else None

    def __call__(self, value: str) -> bool:
        return value in self.literals or (self.regex is not None and self.regex.match(value) is not None)


def _lookup(arguments: Any, path: str) -> Any:
    value = arguments
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _compile_condition(cond: dict[str, Any]) -> Callable[[dict], bool]:
    arg, op, expected = cond["arg"], cond["op"], cond["value"]
    if op == "eq":
        test = lambda v: v == expected  # noqa: E731
    elif op == "ne":
        test = lambda v: v != expected  # noqa: E731
    elif op == "in":
        options = list(expected)
        test = lambda v: any(v == o for o in options)  # noqa: E731
    elif op == "glob":
        pattern = re.compile(fnmatch.translate(expected))
        # The whole value is matched: truncating would let padding carry a payload past a rule.
        test = lambda v: isinstance(v, str) and pattern.match(v) is not None  # noqa: E731
    elif op == "regex":
        pattern = re.compile(expected)
        test = lambda v: isinstance(v, str) and pattern.search(v) is not None  # noqa: E731
    elif op == "lt":
        test = lambda v: _number(v) and v < expected  # noqa: E731
    elif op == "gt":
        test = lambda v: _number(v) and v > expected  # noqa: E731
    else:
        raise PolicyEngineError(f"unknown condition op {op!r}")

    def check(arguments: dict) -> bool:
        value = _lookup(arguments, arg)
        return value is not _MISSING and bool(test(value))

    return check


class _TimeWindow:
    __slots__ = ("days", "end", "start", "zone")

    def __init__(self, spec: dict[str, Any]):
        self.days = frozenset(_DAY_NAMES.index(d) for d in spec.get("days") or _DAY_NAMES)
        self.start = _minutes(spec.get("start", "00:00"))
        self.end = _minutes(spec.get("end", "23:59"))
        self.zone = ZoneInfo(spec.get("timezone", "UTC"))

    def __call__(self, now: datetime) -> bool:
        local = now.astimezone(self.zone)
        minute = local.hour * 60 + local.minute
        if self.start <= self.end:
            return local.weekday() in self.days and self.start <= minute <= self.end
        # Overnight window (22:00-06:00): the early-morning part belongs to the previous day.
        if minute >= self.start:
            return local.weekday() in self.days
        return minute <= self.end and (local.weekday() - 1) % 7 in self.days


def _minutes(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


@dataclass(slots=True)
class CompiledRule:
    id: int
    policy_id: str
    effect: str
    mode: str
    priority: int
    reason: str
    agents: frozenset[int]
    roles: frozenset[str]
    servers: _GlobSet | None
    tools: _GlobSet | None
    actions: frozenset[str]
    resources: _GlobSet | None
    risk_tiers: frozenset[str]
    conditions: tuple[Callable[[dict], bool], ...]
    window: _TimeWindow | None
    server_keys: tuple[str | None, ...]
    tool_keys: tuple[str | None, ...]

    def first_failure(self, ctx: CallContext, now: datetime) -> str | None:
        """The name of the first matcher this call fails, or None if the rule matches."""
        if (self.agents or self.roles) and ctx.agent_id not in self.agents and not (self.roles & ctx.roles):
            return "agents/roles"
        if self.servers is not None and not self.servers(ctx.server):
            return "servers"
        if self.tools is not None and not self.tools(ctx.tool):
            return "tools"
        if self.actions and ctx.action not in self.actions:
            return "actions"
        if self.resources is not None and not self.resources(ctx.resource):
            return "resources"
        if self.risk_tiers and ctx.risk_tier not in self.risk_tiers:
            return "risk_tiers"
        for index, condition in enumerate(self.conditions):
            if not condition(ctx.arguments):
                return f"conditions[{index}]"
        if self.window is not None and not self.window(now):
            return "time_window"
        return None


def _index_keys(patterns: list[str]) -> tuple[str | None, ...]:
    if not patterns or any(_has_wildcard(p) for p in patterns):
        return (None,)
    return tuple(dict.fromkeys(patterns))


def compile_rule(policy: dict[str, Any]) -> CompiledRule:
    """Compile one validated policy body (a dict with the Policy fields plus id and slug)."""
    try:
        return CompiledRule(
            id=policy["id"],
            policy_id=policy["slug"],
            effect=policy["effect"],
            mode=policy["mode"],
            priority=policy["priority"],
            reason=policy.get("reason") or "",
            agents=frozenset(policy.get("agents") or ()),
            roles=frozenset(policy.get("roles") or ()),
            servers=_GlobSet(policy["servers"]) if policy.get("servers") else None,
            tools=_GlobSet(policy["tools"]) if policy.get("tools") else None,
            actions=frozenset(policy.get("actions") or ()),
            resources=_GlobSet(policy["resources"]) if policy.get("resources") else None,
            risk_tiers=frozenset(policy.get("risk_tiers") or ()),
            conditions=tuple(_compile_condition(c) for c in policy.get("conditions") or ()),
            window=_TimeWindow(policy["time_window"]) if policy.get("time_window") else None,
            server_keys=_index_keys(policy.get("servers") or []),
            tool_keys=_index_keys(policy.get("tools") or []),
        )
    except (KeyError, TypeError, ValueError, re.error) as exc:
        raise PolicyEngineError(f"cannot compile policy {policy.get('slug')!r}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class ExceptionEntry:
    id: int
    expires_at: datetime | None


class PolicyEngine:
    """An immutable compiled rule set plus the active exceptions, at one policy version."""

    def __init__(self, rules: Iterable[CompiledRule], exceptions: dict[tuple, ExceptionEntry], version: int = 0):
        self.version = version
        self.rules = sorted(rules, key=lambda r: (-r.priority, r.id))
        self.exceptions = exceptions
        self._buckets: dict[tuple[str | None, str | None], list[CompiledRule]] = {}
        for rule in self.rules:  # already in priority order, so every bucket is too
            for server in rule.server_keys:
                for tool in rule.tool_keys:
                    self._buckets.setdefault((server, tool), []).append(rule)

    def candidates(self, server: str, tool: str) -> list[CompiledRule]:
        found: list[CompiledRule] = []
        for key in ((server, tool), (server, None), (None, tool), (None, None)):
            bucket = self._buckets.get(key)
            if bucket:
                found.extend(bucket)
        if len(found) > 1:
            found.sort(key=lambda r: (-r.priority, r.id))
        return found

    def could_allow(self, *, agent_id: int, roles: frozenset[str], server: str, tool: str, action: str) -> bool:
        """Whether some call to this tool could ever be allowed or escalated for this agent.

        Used to filter tools/list: a tool is hidden when no enforce allow/escalate rule could match
        it, or when an enforce deny matches it with nothing (resource, arguments, tier, time) that
        could make it not apply.
        """
        possible = False
        for rule in self.candidates(server, tool):
            if rule.mode != "enforce":
                continue
            if (rule.agents or rule.roles) and agent_id not in rule.agents and not (rule.roles & roles):
                continue
            if (rule.servers is not None and not rule.servers(server)) or (
                rule.tools is not None and not rule.tools(tool)
            ):
                continue
            if rule.actions and action not in rule.actions:
                continue
            if rule.effect == "deny":
                if rule.resources is None and not rule.risk_tiers and not rule.conditions and rule.window is None:
                    return False
            else:
                possible = True
        return possible

    def decide(self, ctx: CallContext) -> Decision:
        now = ctx.now or timezone.now()
        candidates = self.candidates(ctx.server, ctx.tool)
        trace: list[dict[str, Any]] = []
        shadow: list[dict[str, Any]] = []
        winners: dict[str, CompiledRule] = {}
        shadow_winners: dict[str, CompiledRule] = {}
        for rule in candidates:
            failed = rule.first_failure(ctx, now)
            entry = {"policy_id": rule.policy_id, "effect": rule.effect, "mode": rule.mode, "matched": failed is None}
            if failed is not None:
                entry["failed"] = failed
            trace.append(entry)
            if failed is None:
                if rule.mode == "shadow":
                    shadow.append({"policy_id": rule.policy_id, "would_have": rule.effect})
                    shadow_winners.setdefault(rule.effect, rule)
                else:
                    winners.setdefault(rule.effect, rule)
        decision = self._combine(ctx, winners)
        decision.trace = trace
        decision.rules_total = len(self.rules)
        decision.rules_skipped = len(self.rules) - len(candidates)
        if shadow:
            decision.shadow = shadow
            decision.shadow_decision = self._combine(ctx, {**shadow_winners, **winners}, now=now).decision
        return decision

    def _combine(self, ctx: CallContext, winners: dict[str, CompiledRule], now: datetime | None = None) -> Decision:
        if "deny" in winners:
            rule = winners["deny"]
            return Decision("deny", rule.policy_id, rule.reason or f"Denied by policy {rule.policy_id}.")
        if "escalate" in winners:
            rule = winners["escalate"]
            exception = self.exceptions.get((ctx.agent_id, ctx.server, ctx.tool, ctx.resource))
            moment = now or ctx.now or timezone.now()
            if exception is not None and (exception.expires_at is None or exception.expires_at > moment):
                return Decision(
                    "allow",
                    f"exception.{exception.id}",
                    f"Allowed by exception {exception.id} (instead of escalation by {rule.policy_id}).",
                    exception_id=exception.id,
                )
            return Decision("escalate", rule.policy_id, rule.reason or f"Needs approval under {rule.policy_id}.")
        if "allow" in winners:
            rule = winners["allow"]
            return Decision("allow", rule.policy_id, rule.reason or f"Allowed by policy {rule.policy_id}.")
        return Decision("deny", DEFAULT_DENY, "No policy allows this call (default deny).")


def build_engine(policies: Iterable[dict[str, Any]], exceptions: Iterable[Any] = (), version: int = 0) -> PolicyEngine:
    rules = [compile_rule(p) for p in policies if p.get("enabled", True)]
    table = {
        (e.agent_id, e.server, e.tool, e.resource): ExceptionEntry(e.id, e.expires_at)
        for e in exceptions
        if e.revoked_at is None
    }
    return PolicyEngine(rules, table, version)


class _EngineCache:
    """The process's compiled engine, rebuilt when the database policy version moves."""

    def __init__(self):
        self._lock = threading.Lock()
        self._engine: PolicyEngine | None = None
        self._checked_at = 0.0

    def get(self) -> PolicyEngine:
        engine = self._engine
        if engine is not None and time.monotonic() - self._checked_at < REFRESH_SECONDS:
            return engine
        return self.check()

    def check(self) -> PolicyEngine:
        """Compare the engine's version with the database's, reload it if they differ."""
        with self._lock:
            from policies.selectors import policy_engine_load, policy_version

            if self._engine is not None and time.monotonic() - self._checked_at < REFRESH_SECONDS:
                return self._engine  # checked by another thread while this one waited for the lock
            try:
                started = time.monotonic()  # the engine's age counts from before the query
                version = policy_version()
                if self._engine is None or self._engine.version != version:
                    self._engine = policy_engine_load(version)
                self._checked_at = started
                return self._engine
            except PolicyEngineError:
                raise
            except Exception as exc:  # the database is down or the rules are unreadable
                raise PolicyEngineError(f"policy engine unavailable: {exc}") from exc

    def peek(self) -> PolicyEngine | None:
        """For the event loop, which must not touch the database: the engine if it was checked
        less than 1.5 REFRESH_SECONDS ago; if less than twice that, the engine too, and a check
        starts on a database thread in the background; else None (the caller decides on a thread)."""
        engine = self._engine
        if engine is None:
            return None
        age = time.monotonic() - self._checked_at
        if age < 1.5 * REFRESH_SECONDS:  # a check is a database thread hop: not sooner than needed
            return engine
        if age < 2 * REFRESH_SECONDS:
            from behavry.dbthreads import refresh_ahead  # Django's database layer; not for the pure engine

            refresh_ahead(("policy engine",), self.check)
            return engine
        return None

    def reset(self) -> None:
        with self._lock:
            self._engine = None
            self._checked_at = 0.0


engine_cache = _EngineCache()


def current_engine() -> PolicyEngine:
    return engine_cache.get()
