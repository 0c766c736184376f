"""The pure engine: combining, exceptions, shadow mode, trace, index and every matcher.

No database: rules are plain dicts (the shape `policies.selectors.policy_engine_load` gives
`build_engine`) and exceptions are simple objects with the attributes the engine reads.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.engine import (
    DEFAULT_DENY,
    CallContext,
    PolicyEngineError,
    build_engine,
    compile_rule,
)

PADDING = 10_000  # the length the engine once truncated arguments to
NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday
AGENT = 7
_ids = itertools.count(1)


def rule(slug: str, effect: str = "allow", **fields: Any) -> dict[str, Any]:
    """A policy body as the selectors load it; every matcher empty (matches anything) unless given."""
    body = {
        "id": fields.pop("id", None) or next(_ids),
        "slug": slug,
        "name": slug,
        "effect": effect,
        "mode": "enforce",
        "priority": 100,
        "enabled": True,
        "reason": "",
        "agents": [],
        "roles": [],
        "servers": [],
        "tools": [],
        "actions": [],
        "resources": [],
        "risk_tiers": [],
        "conditions": [],
        "time_window": None,
    }
    body.update(fields)
    return body


@dataclass
class Exc:
    """What build_engine reads from a PolicyException row."""

    id: int
    agent_id: int | None = AGENT
    server: str = "fs"
    tool: str = "delete_file"
    resource: str = "/srv/old.txt"
    expires_at: datetime | None = None
    revoked_at: datetime | None = None


def call(**overrides: Any) -> CallContext:
    values: dict[str, Any] = {
        "agent_id": AGENT,
        "server": "fs",
        "tool": "delete_file",
        "action": "delete",
        "resource": "/srv/old.txt",
        "arguments": {},
        "roles": frozenset(),
        "risk_tier": "low",
        "now": NOW,
    }
    values.update(overrides)
    return CallContext(**values)


def decide(rules, ctx: CallContext | None = None, exceptions=()):
    return build_engine(rules, exceptions).decide(ctx or call())


def test_now_is_a_monday():
    assert NOW.weekday() == 0


# --- combining ------------------------------------------------------------------------------

ALLOW = rule("allow-fs", "allow", servers=["fs"])
ESCALATE = rule("escalate-deletes", "escalate", actions=["delete"])
DENY = rule("deny-old", "deny", resources=["/srv/old*"])


@pytest.mark.parametrize(
    ("rules", "decision", "policy_id"),
    [
        ([], "deny", DEFAULT_DENY),
        ([ALLOW], "allow", "allow-fs"),
        ([ESCALATE], "escalate", "escalate-deletes"),
        ([DENY], "deny", "deny-old"),
        ([ALLOW, ESCALATE], "escalate", "escalate-deletes"),
        ([ALLOW, DENY], "deny", "deny-old"),
        ([ESCALATE, DENY], "deny", "deny-old"),
        ([ALLOW, ESCALATE, DENY], "deny", "deny-old"),
        ([DENY, ESCALATE, ALLOW], "deny", "deny-old"),
    ],
    ids=["nothing", "allow", "escalate", "deny", "escalate>allow", "deny>allow", "deny>escalate", "all", "reversed"],
)
def test_it_combines_deny_over_escalate_over_allow_over_default_deny(rules, decision, policy_id):
    result = decide(rules)
    assert (result.decision, result.policy_id) == (decision, policy_id)


def test_effect_beats_priority():
    rules = [
        rule("allow-high", "allow", priority=1000),
        rule("escalate-mid", "escalate", priority=500),
        rule("deny-low", "deny", priority=-1000),
    ]
    assert decide(rules).policy_id == "deny-low"
    assert decide(rules[:2]).policy_id == "escalate-mid"


def test_priority_picks_the_winning_rule_among_same_effect_rules():
    rules = [
        rule("allow-low", "allow", id=1, priority=10),
        rule("allow-high", "allow", id=2, priority=50),
        rule("allow-mid", "allow", id=3, priority=20),
    ]
    assert decide(rules).policy_id == "allow-high"


def test_equal_priority_falls_back_to_the_lowest_id():
    rules = [rule("second", "deny", id=20, priority=5), rule("first", "deny", id=10, priority=5)]
    assert decide(rules).policy_id == "first"


def test_a_rule_reason_is_the_decision_reason_and_there_is_a_default_one():
    assert decide([rule("r", "deny", reason="No deleting old files.")]).reason == "No deleting old files."
    assert "r" in decide([rule("r", "deny")]).reason
    assert "default deny" in decide([]).reason


def test_disabled_rules_are_not_compiled():
    engine = build_engine([rule("off", "allow", enabled=False)])
    assert engine.rules == []
    assert engine.decide(call()).policy_id == DEFAULT_DENY


# --- exceptions -----------------------------------------------------------------------------


def test_an_exact_exception_turns_escalate_into_allow():
    result = decide([ALLOW, ESCALATE], exceptions=[Exc(id=42)])
    assert result.decision == "allow"
    assert result.policy_id == "exception.42"
    assert result.exception_id == 42
    assert "escalate-deletes" in result.reason


def test_an_exception_never_overrides_a_deny():
    result = decide([ESCALATE, DENY], exceptions=[Exc(id=42)])
    assert (result.decision, result.policy_id, result.exception_id) == ("deny", "deny-old", None)


def test_an_exception_alone_allows_nothing():
    """It only changes an escalate; with no matching rule the call still falls to default deny."""
    assert decide([], exceptions=[Exc(id=42)]).policy_id == DEFAULT_DENY


@pytest.mark.parametrize(
    "different",
    [{"agent_id": 8}, {"server": "fs2"}, {"tool": "delete_dir"}, {"resource": "/srv/old.txt.bak"}, {"resource": ""}],
    ids=["agent", "server", "tool", "resource", "empty-resource"],
)
def test_an_exception_must_match_the_exact_call(different):
    result = decide([ESCALATE], exceptions=[Exc(id=42, **different)])
    assert (result.decision, result.policy_id) == ("escalate", "escalate-deletes")


def test_an_exception_with_an_empty_resource_matches_calls_without_one():
    result = decide([ESCALATE], call(resource=""), exceptions=[Exc(id=5, resource="")])
    assert result.policy_id == "exception.5"


def test_an_expired_exception_does_not_apply():
    expired = Exc(id=1, expires_at=NOW - timedelta(seconds=1))
    assert decide([ESCALATE], exceptions=[expired]).decision == "escalate"
    at_the_second = Exc(id=1, expires_at=NOW)
    assert decide([ESCALATE], exceptions=[at_the_second]).decision == "escalate"
    live = Exc(id=1, expires_at=NOW + timedelta(seconds=1))
    assert decide([ESCALATE], exceptions=[live]).policy_id == "exception.1"


def test_a_revoked_exception_does_not_apply():
    revoked = Exc(id=1, revoked_at=NOW - timedelta(days=1))
    assert decide([ESCALATE], exceptions=[revoked]).decision == "escalate"


# --- shadow mode ----------------------------------------------------------------------------


def test_a_shadow_deny_never_decides_but_is_reported():
    rules = [ALLOW, rule("would-deny", "deny", mode="shadow")]
    result = decide(rules)
    assert (result.decision, result.policy_id) == ("allow", "allow-fs")
    assert result.shadow == [{"policy_id": "would-deny", "would_have": "deny"}]
    assert result.shadow_decision == "deny"


def test_a_shadow_allow_does_not_rescue_a_default_deny():
    result = decide([rule("would-allow", "allow", mode="shadow")])
    assert result.policy_id == DEFAULT_DENY
    assert result.shadow_decision == "allow"


def test_a_shadow_escalate_reports_what_an_exception_would_do():
    result = decide([ALLOW, rule("would-escalate", "escalate", mode="shadow")], exceptions=[Exc(id=3)])
    assert result.decision == "allow" and result.policy_id == "allow-fs"
    assert result.shadow_decision == "allow"
    assert result.shadow == [{"policy_id": "would-escalate", "would_have": "escalate"}]


def test_a_shadow_decision_keeps_the_enforced_deny():
    result = decide([DENY, rule("would-allow", "allow", mode="shadow")])
    assert result.decision == "deny" and result.shadow_decision == "deny"


def test_without_matching_shadow_rules_there_is_no_shadow_decision():
    result = decide([ALLOW, rule("shadow-git", "deny", mode="shadow", servers=["git"])])
    assert result.shadow == [] and result.shadow_decision is None
    assert result.as_dict()["shadow_decision"] is None


# --- trace and index ------------------------------------------------------------------------


def test_the_trace_lists_every_candidate_with_the_failed_matcher():
    rules = [
        rule("deny-git", "deny", id=1, priority=300, tools=["delete_file"], agents=[99]),
        rule("escalate-big", "escalate", id=2, priority=200, conditions=[{"arg": "size", "op": "gt", "value": 10}]),
        rule("allow-fs", "allow", id=3, priority=100, servers=["fs"]),
        rule("shadow-deny", "deny", id=4, priority=50, mode="shadow", actions=["read"]),
    ]
    result = decide(rules, call(arguments={"size": 3}))
    assert result.trace == [
        {"policy_id": "deny-git", "effect": "deny", "mode": "enforce", "matched": False, "failed": "agents/roles"},
        {
            "policy_id": "escalate-big",
            "effect": "escalate",
            "mode": "enforce",
            "matched": False,
            "failed": "conditions[0]",
        },
        {"policy_id": "allow-fs", "effect": "allow", "mode": "enforce", "matched": True},
        {"policy_id": "shadow-deny", "effect": "deny", "mode": "shadow", "matched": False, "failed": "actions"},
    ]
    assert result.decision == "allow"


def test_the_trace_names_the_first_failing_matcher_in_a_fixed_order():
    everything_wrong = rule(
        "r",
        agents=[1],
        servers=["git"],
        tools=["x"],
        actions=["read"],
        resources=["/etc/*"],
        risk_tiers=["high"],
        conditions=[{"arg": "a", "op": "eq", "value": 1}],
        time_window={"days": ["sun"], "start": "00:00", "end": "01:00", "timezone": "UTC"},
    )
    order = ["agents", "servers", "tools", "actions", "resources", "risk_tiers", "conditions", "time_window"]
    names = ["agents/roles", "servers", "tools", "actions", "resources", "risk_tiers", "conditions[0]", "time_window"]
    compiled_failures = []
    body = dict(everything_wrong)
    for key in order:
        compiled_failures.append(compile_rule(body).first_failure(call(), NOW))
        body[key] = None if key == "time_window" else []
    assert compiled_failures == names
    assert compile_rule(body).first_failure(call(), NOW) is None


def test_the_index_skips_rules_for_other_servers_and_tools():
    rules = [
        rule("git-push", "deny", servers=["git"], tools=["push"]),
        rule("git-any", "deny", servers=["git"]),
        rule("any-push", "deny", tools=["push"]),
        rule("fs-delete", "allow", servers=["fs"], tools=["delete_file"]),
    ]
    result = decide(rules)
    assert result.as_dict()["rules_total"] == 4
    assert result.as_dict()["rules_skipped_by_index"] == 3
    assert [t["policy_id"] for t in result.trace] == ["fs-delete"]
    assert result.policy_id == "fs-delete"


def test_glob_and_empty_matchers_are_never_skipped_by_the_index():
    rules = [
        rule("fs-star", "escalate", id=1, servers=["fs-*"]),
        rule("star", "allow", id=2, servers=["*"]),
        rule("any-server", "allow", id=3),
        rule("tool-glob", "allow", id=4, tools=["delete_*"]),
        rule("mixed", "deny", id=5, servers=["git", "fs-p?od"], tools=["delete_file", "x"]),
        rule("literal-elsewhere", "deny", id=6, servers=["fs"]),
    ]
    result = decide(rules, call(server="fs-prod"))
    assert {t["policy_id"] for t in result.trace} == {"fs-star", "star", "any-server", "tool-glob", "mixed"}
    assert result.rules_skipped == 1
    assert (result.decision, result.policy_id) == ("deny", "mixed")


def test_a_rule_listing_several_literal_servers_is_found_under_each():
    rules = [rule("two-servers", "allow", servers=["fs", "git"], tools=["delete_file", "push"])]
    for server, tool in (("fs", "delete_file"), ("git", "push"), ("fs", "push")):
        result = decide(rules, call(server=server, tool=tool))
        assert result.policy_id == "two-servers"
        assert len(result.trace) == 1
    assert decide(rules, call(server="db", tool="push")).trace == []


def test_candidates_from_several_buckets_are_evaluated_in_priority_order():
    rules = [
        rule("exact", "allow", id=1, priority=1, servers=["fs"], tools=["delete_file"]),
        rule("server", "allow", id=2, priority=3, servers=["fs"]),
        rule("tool", "allow", id=3, priority=2, tools=["delete_file"]),
        rule("wild", "allow", id=4, priority=4),
    ]
    result = decide(rules)
    assert [t["policy_id"] for t in result.trace] == ["wild", "server", "tool", "exact"]
    assert result.policy_id == "wild"


# --- matchers -------------------------------------------------------------------------------


def matches(body_fields: dict[str, Any], **ctx: Any) -> str | None:
    """None if the rule matches the call, else the name of the matcher that failed."""
    return compile_rule(rule("m", **body_fields)).first_failure(call(**ctx), ctx.get("now", NOW))


@pytest.mark.parametrize(
    ("fields", "ctx", "failed"),
    [
        # agents or roles
        ({"agents": [AGENT]}, {}, None),
        ({"agents": [1, 2]}, {}, "agents/roles"),
        ({"agents": [AGENT]}, {"agent_id": None}, "agents/roles"),
        ({"roles": ["readers"]}, {"roles": frozenset({"readers", "x"})}, None),
        ({"roles": ["readers"]}, {"roles": frozenset({"writers"})}, "agents/roles"),
        ({"agents": [1], "roles": ["readers"]}, {"roles": frozenset({"readers"})}, None),
        ({"agents": [AGENT], "roles": ["readers"]}, {}, None),
        ({"agents": [1], "roles": ["readers"]}, {}, "agents/roles"),
        # servers and tools: case-sensitive globs
        ({"servers": ["fs"]}, {}, None),
        ({"servers": ["fs-*"]}, {"server": "fs-prod"}, None),
        ({"servers": ["fs-*"]}, {}, "servers"),
        ({"servers": ["f?"]}, {}, None),
        ({"servers": ["[fg]s"]}, {"server": "gs"}, None),
        ({"servers": ["[!f]s"]}, {}, "servers"),
        ({"servers": ["FS"]}, {}, "servers"),
        ({"servers": ["git", "f*"]}, {}, None),
        ({"tools": ["delete_*"]}, {}, None),
        ({"tools": ["*_dir"]}, {}, "tools"),
        ({"tools": ["delete_file"]}, {"tool": "delete_file2"}, "tools"),
        # actions
        ({"actions": ["delete", "write"]}, {}, None),
        ({"actions": ["read"]}, {}, "actions"),
        # resources
        ({"resources": ["/srv/*"]}, {}, None),
        ({"resources": ["/srv/*"]}, {"resource": "/srv/a/b/c.txt"}, None),
        ({"resources": ["/srv/*"]}, {"resource": "/etc/passwd"}, "resources"),
        ({"resources": ["/srv/*"]}, {"resource": ""}, "resources"),
        ({"resources": ["*"]}, {"resource": ""}, None),
        ({"resources": ["/srv/old.txt"]}, {}, None),
        # risk tiers
        ({"risk_tiers": ["high", "critical"]}, {"risk_tier": "critical"}, None),
        ({"risk_tiers": ["high", "critical"]}, {}, "risk_tiers"),
    ],
)
def test_each_matcher(fields, ctx, failed):
    assert matches(fields, **ctx) == failed


ARGS = {
    "path": "/srv/reports/q1.csv",
    "mode": "fast",
    "count": 12,
    "ratio": 0.5,
    "force": True,
    "nothing": None,
    "options": {"recursive": True, "depth": 3, "owner": {"name": "ops"}},
    "files": [{"path": "/home/a"}, {"path": "/etc/shadow"}],
    "tags": ["x", "y"],
}


@pytest.mark.parametrize(
    ("condition", "holds"),
    [
        ({"arg": "mode", "op": "eq", "value": "fast"}, True),
        ({"arg": "mode", "op": "eq", "value": "slow"}, False),
        ({"arg": "count", "op": "eq", "value": 12}, True),
        ({"arg": "nothing", "op": "eq", "value": None}, True),
        ({"arg": "tags", "op": "eq", "value": ["x", "y"]}, True),
        ({"arg": "mode", "op": "ne", "value": "slow"}, True),
        ({"arg": "mode", "op": "ne", "value": "fast"}, False),
        ({"arg": "mode", "op": "in", "value": ["fast", "safe"]}, True),
        ({"arg": "mode", "op": "in", "value": ["safe"]}, False),
        ({"arg": "count", "op": "in", "value": [1, 12]}, True),
        ({"arg": "path", "op": "glob", "value": "/srv/*.csv"}, True),
        ({"arg": "path", "op": "glob", "value": "/srv/*.txt"}, False),
        ({"arg": "count", "op": "glob", "value": "*"}, False),
        ({"arg": "path", "op": "regex", "value": r"reports/q\d"}, True),
        ({"arg": "path", "op": "regex", "value": r"^reports"}, False),
        ({"arg": "count", "op": "regex", "value": ".*"}, False),
        ({"arg": "count", "op": "lt", "value": 13}, True),
        ({"arg": "count", "op": "lt", "value": 12}, False),
        ({"arg": "count", "op": "gt", "value": 11.5}, True),
        ({"arg": "ratio", "op": "gt", "value": 0.5}, False),
        ({"arg": "mode", "op": "lt", "value": 100}, False),
        ({"arg": "force", "op": "gt", "value": 0}, False),
        # dotted paths, list indices
        ({"arg": "options.recursive", "op": "eq", "value": True}, True),
        ({"arg": "options.depth", "op": "gt", "value": 2}, True),
        ({"arg": "options.owner.name", "op": "eq", "value": "ops"}, True),
        ({"arg": "files.1.path", "op": "glob", "value": "/etc/*"}, True),
        ({"arg": "files.0.path", "op": "glob", "value": "/etc/*"}, False),
        ({"arg": "tags.0", "op": "eq", "value": "x"}, True),
        ({"arg": "tags.2", "op": "eq", "value": "x"}, False),
        ({"arg": "mode.length", "op": "eq", "value": 4}, False),
        # a missing argument satisfies no condition, not even `ne`
        ({"arg": "absent", "op": "eq", "value": None}, False),
        ({"arg": "absent", "op": "ne", "value": "anything"}, False),
        ({"arg": "options.absent", "op": "ne", "value": 1}, False),
        ({"arg": "files.9.path", "op": "ne", "value": "/x"}, False),
    ],
)
def test_each_condition_op(condition, holds):
    failed = matches({"conditions": [condition]}, arguments=ARGS)
    assert failed == (None if holds else "conditions[0]")


def test_all_conditions_must_hold_and_the_first_false_one_is_named():
    conditions = [
        {"arg": "mode", "op": "eq", "value": "fast"},
        {"arg": "count", "op": "gt", "value": 100},
        {"arg": "absent", "op": "eq", "value": 1},
    ]
    assert matches({"conditions": conditions}, arguments=ARGS) == "conditions[1]"
    assert matches({"conditions": conditions[:1]}, arguments=ARGS) is None


def test_a_deny_condition_cannot_be_dodged_by_padding_the_argument():
    rules = [
        rule("allow-shell", "allow"),
        rule("deny-rm-rf", "deny", conditions=[{"arg": "command", "op": "regex", "value": r"rm\s+-rf"}]),
    ]
    padded = " " * PADDING + "rm -rf /"
    assert decide(rules, call(arguments={"command": "rm -rf /"})).decision == "deny"
    assert decide(rules, call(arguments={"command": padded})).decision == "deny"


def test_an_allow_glob_does_not_match_a_value_it_only_matches_in_part():
    rules = [rule("allow-srv", "allow", conditions=[{"arg": "path", "op": "glob", "value": "/srv/*.txt"}])]
    looks_safe = "/srv/" + "a" * (PADDING - len("/srv/.txt")) + ".txt"
    sneaky = looks_safe + "/../../etc/shadow"
    assert decide(rules, call(arguments={"path": looks_safe})).policy_id == "allow-srv"
    assert decide(rules, call(arguments={"path": sneaky})).policy_id == DEFAULT_DENY


def at(day: int, hour: int, minute: int = 0) -> datetime:
    """A UTC moment in the week of NOW; day 0 is Monday."""
    return NOW.replace(hour=hour, minute=minute) + timedelta(days=day)


OFFICE = {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:00", "timezone": "UTC"}
NIGHT = {"days": ["mon"], "start": "22:00", "end": "06:00", "timezone": "UTC"}


@pytest.mark.parametrize(
    ("window", "now", "inside"),
    [
        (OFFICE, at(0, 9), True),
        (OFFICE, at(0, 17), True),
        (OFFICE, at(0, 17, 1), False),
        (OFFICE, at(0, 8, 59), False),
        (OFFICE, at(4, 12), True),
        (OFFICE, at(5, 12), False),
        # overnight: the early hours belong to the day the window started on
        (NIGHT, at(0, 23), True),
        (NIGHT, at(1, 5), True),
        (NIGHT, at(1, 6), True),
        (NIGHT, at(1, 6, 1), False),
        (NIGHT, at(0, 5), False),
        (NIGHT, at(1, 23), False),
        (NIGHT, at(0, 21, 59), False),
        # time zones: NOW is 10:00 UTC, 11:00 in Berlin (CET), 05:00 in New York (EST)
        ({"start": "11:00", "end": "11:59", "timezone": "Europe/Berlin"}, NOW, True),
        ({"start": "11:00", "end": "11:59", "timezone": "UTC"}, NOW, False),
        ({"days": ["mon"], "start": "09:00", "end": "17:00", "timezone": "America/New_York"}, NOW, False),
        # Monday 23:30 UTC is already Tuesday in Berlin
        ({"days": ["tue"], "start": "00:00", "end": "01:00", "timezone": "Europe/Berlin"}, at(0, 23, 30), True),
        ({"days": ["mon"], "start": "00:00", "end": "23:59", "timezone": "Europe/Berlin"}, at(0, 23, 30), False),
        # defaults: every day, all day, UTC
        ({}, NOW, True),
        ({"days": ["sun"]}, NOW, False),
    ],
)
def test_time_window(window, now, inside):
    body = rule("w", time_window=window or {"start": "00:00"})
    failed = compile_rule(body).first_failure(call(now=now), now)
    assert failed == (None if inside else "time_window")


def test_decide_uses_the_context_time_for_windows():
    rules = [rule("office", "allow", time_window=OFFICE)]
    assert decide(rules, call(now=at(0, 12))).decision == "allow"
    assert decide(rules, call(now=at(6, 12))).policy_id == DEFAULT_DENY


def test_decide_defaults_to_the_current_time():
    always = {"days": [*OFFICE["days"], "sat", "sun"], "start": "00:00", "end": "23:59"}
    assert decide([rule("any-time", "allow", time_window=always)], call(now=None)).decision == "allow"


@pytest.mark.parametrize(
    "broken",
    [
        {"conditions": [{"arg": "a", "op": "like", "value": 1}]},
        {"conditions": [{"arg": "a", "op": "regex", "value": "("}]},
        {"conditions": [{"arg": "a", "op": "in", "value": 3}]},
        {"time_window": {"timezone": "Mars/Olympus"}},
        {"time_window": {"start": "nine"}},
    ],
    ids=["unknown-op", "bad-regex", "in-not-list", "bad-zone", "bad-time"],
)
def test_a_rule_that_cannot_compile_raises_policy_engine_error(broken):
    with pytest.raises(PolicyEngineError):
        build_engine([rule("broken", **broken)])


def test_a_rule_missing_fields_raises_policy_engine_error():
    with pytest.raises(PolicyEngineError):
        build_engine([{"slug": "half", "effect": "allow"}])


def test_decision_as_dict_has_the_documented_keys():
    assert set(decide([ALLOW]).as_dict()) >= {"decision", "policy_id", "reason", "trace", "shadow", "shadow_decision"}


# --- properties -----------------------------------------------------------------------------

SERVERS = ["fs", "git", "db"]
TOOLS = ["read_file", "write_file", "rm", "push"]
CONDITIONS = [
    {"arg": "n", "op": "gt", "value": 5},
    {"arg": "n", "op": "lt", "value": 5},
    {"arg": "p", "op": "glob", "value": "/srv/*"},
    {"arg": "p", "op": "regex", "value": "secret"},
    {"arg": "o.flag", "op": "eq", "value": True},
    {"arg": "p", "op": "ne", "value": "/srv/a"},
    {"arg": "n", "op": "in", "value": [1, 2, 3]},
]


def _sub(values: list[Any], max_size: int = 2):
    return st.lists(st.sampled_from(values), max_size=max_size, unique=True)


rule_fields = st.fixed_dictionaries(
    {
        "effect": st.sampled_from(["allow", "deny", "escalate"]),
        "mode": st.sampled_from(["enforce", "enforce", "shadow"]),
        "priority": st.integers(-3, 3),
        "agents": _sub([1, 2]),
        "roles": _sub(["ops", "bots"], 1),
        "servers": _sub([*SERVERS, "f*", "*", "g?t"]),
        "tools": _sub([*TOOLS, "*_file", "r[mn]"]),
        "actions": _sub(["read", "write", "delete"]),
        "resources": _sub(["/srv/*", "/srv/a", "*"], 1),
        "risk_tiers": _sub(["low", "high"], 1),
        "conditions": st.lists(st.sampled_from(range(len(CONDITIONS))), max_size=2, unique=True).map(
            lambda picks: [CONDITIONS[i] for i in picks]
        ),
    }
)


@st.composite
def rule_sets(draw, min_size: int = 0, max_size: int = 8):
    bodies = draw(st.lists(rule_fields, min_size=min_size, max_size=max_size))
    return [rule(f"r{i}", id=i, **body) for i, body in enumerate(bodies, start=1)]


contexts = st.builds(
    CallContext,
    agent_id=st.sampled_from([1, 2, 3, None]),
    server=st.sampled_from([*SERVERS, "fs-x"]),
    tool=st.sampled_from(TOOLS),
    action=st.sampled_from(["read", "write", "delete", "other"]),
    resource=st.sampled_from(["", "/srv/a", "/srv/b", "/etc/x"]),
    arguments=st.fixed_dictionaries(
        {},
        optional={
            "n": st.integers(0, 10),
            "p": st.sampled_from(["/srv/a", "/srv/secret", "/etc/x"]),
            "o": st.fixed_dictionaries({"flag": st.booleans()}),
        },
    ),
    roles=st.frozensets(st.sampled_from(["ops", "bots"])),
    risk_tier=st.sampled_from(["low", "high"]),
    now=st.just(NOW),
)


@st.composite
def scenarios(draw, max_rules: int = 8):
    """Rules, a call, and exceptions, one of which is often for exactly this call."""
    rules = draw(rule_sets(max_size=max_rules))
    ctx = draw(contexts)
    keys = draw(
        st.lists(
            st.tuples(
                st.sampled_from([1, 2, 3]),
                st.sampled_from(SERVERS),
                st.sampled_from(TOOLS),
                st.sampled_from(["", "/srv/a", "/srv/b"]),
            ),
            max_size=3,
            unique=True,
        )
    )
    if draw(st.booleans()):
        keys.append((ctx.agent_id, ctx.server, ctx.tool, ctx.resource))
    exceptions = [
        Exc(id=100 + i, agent_id=a, server=s, tool=t, resource=r, expires_at=draw(st.sampled_from([None, NOW])))
        for i, (a, s, t, r) in enumerate(keys)
    ]
    return rules, ctx, exceptions


PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def summary(decision) -> tuple:
    return (decision.decision, decision.policy_id, decision.shadow_decision)


@PROPERTY
@given(scenario=scenarios(), extra=rule_fields)
def test_adding_an_enforce_deny_never_turns_a_deny_into_anything_else(scenario, extra):
    rules, ctx, exceptions = scenario
    before = decide(rules, ctx, exceptions)
    extra_rule = rule("extra", id=999, **(extra | {"effect": "deny", "mode": "enforce"}))
    after = decide([*rules, extra_rule], ctx, exceptions)
    if before.decision == "deny":
        assert after.decision == "deny"
    assert after.decision in (before.decision, "deny")


@PROPERTY
@given(scenario=scenarios(), extra=rule_fields)
def test_adding_a_shadow_rule_never_changes_the_decision(scenario, extra):
    rules, ctx, exceptions = scenario
    before = decide(rules, ctx, exceptions)
    after = decide([*rules, rule("extra", id=999, **(extra | {"mode": "shadow"}))], ctx, exceptions)
    assert (after.decision, after.policy_id, after.reason) == (before.decision, before.policy_id, before.reason)


@PROPERTY
@given(scenario=scenarios())
def test_without_allow_rules_only_an_exception_can_allow(scenario):
    rules, ctx, exceptions = scenario
    result = decide([r for r in rules if r["effect"] != "allow"], ctx, exceptions)
    if result.decision == "allow":
        assert result.policy_id.startswith("exception.")
        assert result.exception_id is not None


@PROPERTY
@given(scenario=scenarios())
def test_exceptions_never_change_a_deny(scenario):
    rules, ctx, exceptions = scenario
    without = decide(rules, ctx)
    with_exceptions = decide(rules, ctx, exceptions)
    assert (without.decision == "deny") == (with_exceptions.decision == "deny")
    if without.decision == "deny":
        assert with_exceptions.policy_id == without.policy_id


@PROPERTY
@given(scenario=scenarios(), seed=st.integers(0, 2**32 - 1))
def test_the_decision_does_not_depend_on_the_order_rules_are_given_in(scenario, seed):
    rules, ctx, exceptions = scenario
    shuffled = list(rules)
    random.Random(seed).shuffle(shuffled)
    assert decide(shuffled, ctx, exceptions).as_dict() == decide(rules, ctx, exceptions).as_dict()


def call_key(ctx: CallContext) -> tuple:
    return (ctx.agent_id, ctx.server, ctx.tool, ctx.resource)


def reference(rules: list[dict], ctx: CallContext, exceptions: list[Exc]) -> tuple[str, str]:
    """Decide by scanning every enforce rule, no index: the semantics of DESIGN.md section 4."""
    ordered = sorted(rules, key=lambda r: (-r["priority"], r["id"]))
    matching = [r for r in ordered if r["mode"] == "enforce" and compile_rule(r).first_failure(ctx, ctx.now) is None]
    by_effect = {effect: [r for r in matching if r["effect"] == effect] for effect in ("deny", "escalate", "allow")}
    if by_effect["deny"]:
        return "deny", by_effect["deny"][0]["slug"]
    if by_effect["escalate"]:
        exact = [e for e in exceptions if (e.agent_id, e.server, e.tool, e.resource) == call_key(ctx)]
        if exact and (exact[-1].expires_at is None or exact[-1].expires_at > ctx.now):
            return "allow", f"exception.{exact[-1].id}"
        return "escalate", by_effect["escalate"][0]["slug"]
    if by_effect["allow"]:
        return "allow", by_effect["allow"][0]["slug"]
    return "deny", DEFAULT_DENY


@PROPERTY
@given(scenario=scenarios(max_rules=12))
def test_the_index_decides_exactly_like_a_full_scan(scenario):
    rules, ctx, exceptions = scenario
    result = decide(rules, ctx, exceptions)
    assert (result.decision, result.policy_id) == reference(rules, ctx, exceptions)
    assert result.rules_skipped + len(result.trace) == len(rules)
    matched = {t["policy_id"] for t in result.trace if t["matched"]}
    expected = {r["slug"] for r in rules if compile_rule(r).first_failure(ctx, NOW) is None}
    assert matched == expected


# --- could_allow (tools/list filtering) -----------------------------------------------------


def could_allow(rules, **overrides) -> bool:
    values = {"agent_id": AGENT, "roles": frozenset(), "server": "fs", "tool": "delete_file", "action": "delete"}
    return build_engine(rules).could_allow(**(values | overrides))


@pytest.mark.parametrize(
    ("rules", "listed"),
    [
        ([], False),
        ([ALLOW], True),
        ([ESCALATE], True),
        ([rule("other-server", "allow", servers=["git"])], False),
        ([rule("other-agent", "allow", agents=[1])], False),
        ([rule("shadow-allow", "allow", mode="shadow")], False),
        ([ALLOW, rule("deny-tool", "deny", tools=["delete_file"])], False),
        ([ALLOW, rule("deny-sometimes", "deny", resources=["/etc/*"])], True),
        ([ALLOW, rule("deny-at-night", "deny", time_window=NIGHT)], True),
        ([ALLOW, rule("deny-big", "deny", conditions=[{"arg": "n", "op": "gt", "value": 1}])], True),
        ([ALLOW, rule("deny-high-risk", "deny", risk_tiers=["high"])], True),
        ([ALLOW, rule("deny-reads", "deny", actions=["read"])], True),
        ([ALLOW, rule("shadow-deny", "deny", mode="shadow")], True),
        ([rule("allow-conditional", "allow", conditions=[{"arg": "n", "op": "gt", "value": 1}])], True),
    ],
)
def test_could_allow_lists_a_tool_only_when_some_call_could_pass(rules, listed):
    assert could_allow(rules) is listed


@PROPERTY
@given(scenario=scenarios())
def test_could_allow_never_hides_a_tool_a_call_would_get_through(scenario):
    rules, ctx, exceptions = scenario
    result = decide(rules, ctx, exceptions)
    listed = build_engine(rules, exceptions).could_allow(
        agent_id=ctx.agent_id, roles=ctx.roles, server=ctx.server, tool=ctx.tool, action=ctx.action
    )
    if result.decision in ("allow", "escalate"):
        assert listed
