"""Checking a policy body before it is stored or compiled. Errors come back per field."""

from __future__ import annotations

import re
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agents.models import Agent, RiskTier, Role
from behavry.errors import InvalidInput
from policies.models import PolicyEffect, PolicyMode
from proxy.models import ToolAction

CONDITION_OPS = ("eq", "ne", "in", "glob", "regex", "lt", "gt")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_PATTERN = 500
MAX_LIST = 1000
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
_ARG_PATH = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")


def _risky_regex(pattern: str) -> bool:
    """True if the pattern can backtrack exponentially in Python's `re` (which has no timeout).

    Walks the parsed pattern: a repeat (`*`, `+`, `{n,}`) that contains another repeat or an
    alternation - (a+)+, ((a+))+, (a|a)*, (x|y*){2,} - or any backreference is refused.
    """
    import re._constants as c
    import re._parser as p

    def walk(items, inside_repeat: bool) -> bool:
        for op, arg in items:
            if op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
                _low, high, sub = arg
                repeats = high is c.MAXREPEAT or high > 1
                if inside_repeat and repeats:
                    return True
                if walk(sub, inside_repeat or repeats):
                    return True
            elif op is c.BRANCH:
                if inside_repeat:
                    return True
                if any(walk(branch, inside_repeat) for branch in arg[1]):
                    return True
            elif op is c.SUBPATTERN:
                if walk(arg[-1], inside_repeat):
                    return True
            elif op in (c.ASSERT, c.ASSERT_NOT):
                if walk(arg[1], inside_repeat):
                    return True
            elif op in (c.GROUPREF, c.GROUPREF_EXISTS):
                return True
        return False

    try:
        return walk(p.parse(pattern), False)
    except Exception:  # noqa: BLE001 - unparsable patterns are reported by re.compile below
        return False


KNOWN_FIELDS = {
    "name",
    "priority",
    "effect",
    "mode",
    "enabled",
    "agents",
    "roles",
    "servers",
    "tools",
    "actions",
    "resources",
    "risk_tiers",
    "conditions",
    "time_window",
    "reason",
}


def check_glob(pattern: Any) -> str | None:
    """An error message for a bad glob, or None."""
    if not isinstance(pattern, str) or not pattern:
        return "must be a non-empty string"
    if len(pattern) > MAX_PATTERN:
        return f"longer than {MAX_PATTERN} characters"
    if any(ord(c) < 32 for c in pattern):
        return "contains control characters"
    depth = 0
    for char in pattern:
        if char == "[":
            depth += 1
        elif char == "]" and depth:
            depth -= 1
    if depth:
        return "has an unclosed '['"
    return None


def check_regex(pattern: Any) -> str | None:
    if not isinstance(pattern, str) or not pattern:
        return "must be a non-empty string"
    if len(pattern) > MAX_PATTERN:
        return f"longer than {MAX_PATTERN} characters"
    if _risky_regex(pattern):
        return "could backtrack catastrophically (nested quantifiers or backreferences are refused)"
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"is not a valid regular expression: {exc}"
    return None


def _string_list(data: dict, key: str, errors: dict, *, choices=None, glob=False) -> list[str]:
    value = data.get(key, [])
    if value is None:
        value = []
    if not isinstance(value, list):
        errors[key] = ["Must be a list."]
        return []
    if len(value) > MAX_LIST:
        errors[key] = [f"At most {MAX_LIST} entries."]
        return []
    problems = []
    for index, item in enumerate(value):
        if glob:
            problem = check_glob(item)
            if problem:
                problems.append(f"[{index}] {item!r} {problem}.")
        elif not isinstance(item, str) or not item:
            problems.append(f"[{index}] must be a non-empty string.")
        elif choices is not None and item not in choices:
            problems.append(f"[{index}] {item!r} is not one of: {', '.join(choices)}.")
    if problems:
        errors[key] = problems
        return []
    return list(dict.fromkeys(value))


def validate_conditions(value: Any, errors: dict) -> list[dict]:
    if value is None:
        return []
    if not isinstance(value, list):
        errors["conditions"] = ["Must be a list of {arg, op, value}."]
        return []
    cleaned = []
    for index, cond in enumerate(value):
        prefix = f"conditions[{index}]"
        if not isinstance(cond, dict):
            errors[prefix] = ["Must be an object {arg, op, value}."]
            continue
        unknown = set(cond) - {"arg", "op", "value"}
        if unknown:
            errors[prefix] = [f"Unknown field(s): {', '.join(sorted(unknown))}."]
            continue
        arg, op, val = cond.get("arg"), cond.get("op"), cond.get("value")
        if not isinstance(arg, str) or not _ARG_PATH.match(arg):
            errors[f"{prefix}.arg"] = ["Must be an argument name or dotted path (letters, digits, _ and -)."]
        if op not in CONDITION_OPS:
            errors[f"{prefix}.op"] = [f"Must be one of: {', '.join(CONDITION_OPS)}."]
            continue
        if "value" not in cond:
            errors[f"{prefix}.value"] = ["This field is required."]
        elif op == "in" and not isinstance(val, list):
            errors[f"{prefix}.value"] = ["'in' needs a list."]
        elif op == "glob" and check_glob(val):
            errors[f"{prefix}.value"] = [f"Glob {check_glob(val)}."]
        elif op == "regex" and check_regex(val):
            errors[f"{prefix}.value"] = [f"Regex {check_regex(val)}."]
        elif op in ("lt", "gt") and (isinstance(val, bool) or not isinstance(val, int | float)):
            errors[f"{prefix}.value"] = [f"'{op}' needs a number."]
        cleaned.append({"arg": arg, "op": op, "value": val})
    return cleaned


def validate_time_window(value: Any, errors: dict) -> dict | None:
    if value in (None, {}):
        return None
    if not isinstance(value, dict):
        errors["time_window"] = ["Must be an object {days, start, end, timezone}."]
        return None
    unknown = set(value) - {"days", "start", "end", "timezone"}
    if unknown:
        errors["time_window"] = [f"Unknown field(s): {', '.join(sorted(unknown))}."]
        return None
    days = value.get("days", list(DAYS))
    if not isinstance(days, list) or not days or any(d not in DAYS for d in days):
        errors["time_window.days"] = [f"Must be a non-empty list of: {', '.join(DAYS)}."]
    start, end = value.get("start", "00:00"), value.get("end", "23:59")
    for key, text in (("start", start), ("end", end)):
        if not isinstance(text, str) or not _HHMM.match(text):
            errors[f"time_window.{key}"] = ["Must be HH:MM (24-hour)."]
    zone = value.get("timezone", "UTC")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        errors["time_window.timezone"] = [f"Unknown time zone {zone!r}."]
    return {"days": days, "start": start, "end": end, "timezone": zone}


def validate_policy(data: dict[str, Any], *, partial: bool = False, existing: dict | None = None) -> dict[str, Any]:
    """Return the cleaned body, or raise InvalidInput listing every problem by field."""
    errors: dict[str, list[str]] = {}
    if not isinstance(data, dict):
        raise InvalidInput("A policy must be a JSON object.")
    unknown = set(data) - KNOWN_FIELDS
    for key in sorted(unknown):
        errors[key] = ["Unknown field."]
    merged = {**(existing or {}), **data} if partial else dict(data)
    out: dict[str, Any] = {}

    name = merged.get("name")
    if not isinstance(name, str) or not name.strip():
        errors["name"] = ["This field is required."]
    elif len(name) > 200:
        errors["name"] = ["At most 200 characters."]
    else:
        out["name"] = name.strip()
    effect = merged.get("effect")
    if effect not in PolicyEffect.values:
        errors["effect"] = [f"Must be one of: {', '.join(PolicyEffect.values)}."]
    out["effect"] = effect
    mode = merged.get("mode", PolicyMode.ENFORCE)
    if mode not in PolicyMode.values:
        errors["mode"] = [f"Must be one of: {', '.join(PolicyMode.values)}."]
    out["mode"] = mode
    priority = merged.get("priority", 100)
    if isinstance(priority, bool) or not isinstance(priority, int) or not -1_000_000 <= priority <= 1_000_000:
        errors["priority"] = ["Must be an integer between -1000000 and 1000000."]
    out["priority"] = priority
    enabled = merged.get("enabled", True)
    if not isinstance(enabled, bool):
        errors["enabled"] = ["Must be true or false."]
    out["enabled"] = enabled
    reason = merged.get("reason", "")
    if not isinstance(reason, str) or len(reason) > 2000:
        errors["reason"] = ["Must be a string of at most 2000 characters."]
    out["reason"] = reason

    agents = merged.get("agents", []) or []
    if not isinstance(agents, list) or any(
        isinstance(a, bool) or not isinstance(a, int) or not 1 <= a < 2**63 for a in agents
    ):
        errors["agents"] = ["Must be a list of agent ids."]
        agents = []
    else:
        missing = sorted(set(agents) - set(Agent.objects.filter(pk__in=agents).values_list("pk", flat=True)))
        if missing:
            errors["agents"] = [f"Unknown agent id(s): {', '.join(map(str, missing))}."]
    out["agents"] = list(dict.fromkeys(agents))
    roles = _string_list(merged, "roles", errors)
    if roles and "roles" not in errors:
        missing_roles = sorted(set(roles) - set(Role.objects.filter(name__in=roles).values_list("name", flat=True)))
        if missing_roles:
            errors["roles"] = [f"Unknown role(s): {', '.join(missing_roles)}."]
    out["roles"] = roles
    out["servers"] = _string_list(merged, "servers", errors, glob=True)
    out["tools"] = _string_list(merged, "tools", errors, glob=True)
    out["resources"] = _string_list(merged, "resources", errors, glob=True)
    out["actions"] = _string_list(merged, "actions", errors, choices=ToolAction.values)
    out["risk_tiers"] = _string_list(merged, "risk_tiers", errors, choices=RiskTier.values)
    out["conditions"] = validate_conditions(merged.get("conditions", []), errors)
    out["time_window"] = validate_time_window(merged.get("time_window"), errors)
    if errors:
        raise InvalidInput("The policy has invalid fields.", fields=errors)
    return out
