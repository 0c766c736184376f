"""validate_policy: a clean body comes back normalised; every bad input is an InvalidInput naming its field."""

from __future__ import annotations

import pytest

from behavry.errors import InvalidInput
from policies.engine import compile_rule
from policies.validation import MAX_LIST, MAX_PATTERN, check_regex, validate_policy
from tests.factories import AgentFactory, RoleFactory

pytestmark = pytest.mark.django_db

BASE = {"name": "read only", "effect": "allow"}


def errors_for(**fields) -> dict[str, list[str]]:
    with pytest.raises(InvalidInput) as exc:
        validate_policy(BASE | fields)
    return exc.value.fields


def test_it_fills_defaults_for_a_minimal_body():
    assert validate_policy({"name": "  read only  ", "effect": "allow"}) == {
        "name": "read only",
        "effect": "allow",
        "mode": "enforce",
        "priority": 100,
        "enabled": True,
        "reason": "",
        "agents": [],
        "roles": [],
        "servers": [],
        "tools": [],
        "resources": [],
        "actions": [],
        "risk_tiers": [],
        "conditions": [],
        "time_window": None,
    }


def test_it_accepts_a_full_body_and_drops_duplicates():
    agent = AgentFactory()
    RoleFactory(name="readers")
    cleaned = validate_policy(
        {
            "name": "night deletes",
            "priority": -5,
            "effect": "escalate",
            "mode": "shadow",
            "enabled": False,
            "agents": [agent.pk, agent.pk],
            "roles": ["readers"],
            "servers": ["fs", "fs-*", "fs"],
            "tools": ["delete_*", "[rR]m"],
            "actions": ["delete", "write"],
            "resources": ["/srv/**"],
            "risk_tiers": ["high", "critical"],
            "conditions": [
                {"arg": "options.recursive", "op": "eq", "value": True},
                {"arg": "files.0.path", "op": "glob", "value": "/etc/*"},
                {"arg": "path", "op": "regex", "value": r"^/srv/(a|b)/\w+$"},
                {"arg": "size", "op": "gt", "value": 1.5},
                {"arg": "mode", "op": "in", "value": ["x", "y"]},
            ],
            "time_window": {"days": ["sat", "sun"], "start": "22:00", "end": "06:00", "timezone": "Europe/Berlin"},
            "reason": "Deletes at night need a human.",
        }
    )
    assert cleaned["agents"] == [agent.pk]
    assert cleaned["servers"] == ["fs", "fs-*"]
    assert cleaned["time_window"]["timezone"] == "Europe/Berlin"
    compile_rule(cleaned | {"id": 1, "slug": "night-deletes"})  # whatever validates also compiles


def test_a_time_window_fills_its_own_defaults():
    assert validate_policy(BASE | {"time_window": {"start": "08:00"}})["time_window"] == {
        "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
        "start": "08:00",
        "end": "23:59",
        "timezone": "UTC",
    }
    assert validate_policy(BASE | {"time_window": {}})["time_window"] is None


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        # top-level scalars
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": 5}, "name"),
        ({"effect": "permit"}, "effect"),
        ({"effect": None}, "effect"),
        ({"mode": "dry-run"}, "mode"),
        ({"priority": True}, "priority"),
        ({"priority": "5"}, "priority"),
        ({"priority": 1.5}, "priority"),
        ({"priority": 1_000_001}, "priority"),
        ({"enabled": "yes"}, "enabled"),
        ({"reason": 3}, "reason"),
        ({"reason": "x" * 2001}, "reason"),
        ({"colour": "red"}, "colour"),
        # list matchers
        ({"servers": "fs"}, "servers"),
        ({"servers": ["fs-["]}, "servers"),
        ({"servers": [""]}, "servers"),
        ({"servers": [3]}, "servers"),
        ({"servers": ["x" * (MAX_PATTERN + 1)]}, "servers"),
        ({"servers": ["fs\n"]}, "servers"),
        ({"servers": ["s"] * (MAX_LIST + 1)}, "servers"),
        ({"tools": ["read_[file"]}, "tools"),
        ({"resources": [""]}, "resources"),
        ({"resources": "/srv/*"}, "resources"),
        ({"actions": ["nuke"]}, "actions"),
        ({"actions": "read"}, "actions"),
        ({"risk_tiers": ["extreme"]}, "risk_tiers"),
        ({"risk_tiers": [""]}, "risk_tiers"),
        ({"agents": [999_999]}, "agents"),
        ({"agents": ["1"]}, "agents"),
        ({"agents": [True]}, "agents"),
        ({"agents": 1}, "agents"),
        ({"roles": ["ghosts"]}, "roles"),
        ({"roles": "readers"}, "roles"),
        # conditions
        ({"conditions": {"arg": "a", "op": "eq", "value": 1}}, "conditions"),
        ({"conditions": ["a == 1"]}, "conditions[0]"),
        ({"conditions": [{"arg": "a", "op": "eq", "value": 1, "case": "i"}]}, "conditions[0]"),
        ({"conditions": [{"arg": "a", "op": "like", "value": 1}]}, "conditions[0].op"),
        ({"conditions": [{"arg": "a", "value": 1}]}, "conditions[0].op"),
        ({"conditions": [{"arg": "a..b", "op": "eq", "value": 1}]}, "conditions[0].arg"),
        ({"conditions": [{"arg": "", "op": "eq", "value": 1}]}, "conditions[0].arg"),
        ({"conditions": [{"arg": "a b", "op": "eq", "value": 1}]}, "conditions[0].arg"),
        ({"conditions": [{"op": "eq", "value": 1}]}, "conditions[0].arg"),
        ({"conditions": [{"arg": "a", "op": "eq"}]}, "conditions[0].value"),
        ({"conditions": [{"arg": "a", "op": "in", "value": "xy"}]}, "conditions[0].value"),
        ({"conditions": [{"arg": "a", "op": "glob", "value": "fs-["}]}, "conditions[0].value"),
        ({"conditions": [{"arg": "a", "op": "glob", "value": ""}]}, "conditions[0].value"),
        ({"conditions": [{"arg": "a", "op": "regex", "value": "("}]}, "conditions[0].value"),
        ({"conditions": [{"arg": "a", "op": "regex", "value": ""}]}, "conditions[0].value"),
        ({"conditions": [{"arg": "a", "op": "regex", "value": 5}]}, "conditions[0].value"),
        ({"conditions": [{"arg": "a", "op": "lt", "value": "10"}]}, "conditions[0].value"),
        ({"conditions": [{"arg": "a", "op": "gt", "value": True}]}, "conditions[0].value"),
        (
            {"conditions": [{"arg": "a", "op": "eq", "value": 1}, {"arg": "b", "op": "~", "value": 1}]},
            "conditions[1].op",
        ),
        # time window
        ({"time_window": "9-5"}, "time_window"),
        ({"time_window": {"hours": "9-5"}}, "time_window"),
        ({"time_window": {"days": []}}, "time_window.days"),
        ({"time_window": {"days": ["monday"]}}, "time_window.days"),
        ({"time_window": {"days": "mon"}}, "time_window.days"),
        ({"time_window": {"start": "24:00"}}, "time_window.start"),
        ({"time_window": {"start": "9:00"}}, "time_window.start"),
        ({"time_window": {"end": "12:60"}}, "time_window.end"),
        ({"time_window": {"end": 1200}}, "time_window.end"),
        ({"time_window": {"timezone": "Mars/Olympus"}}, "time_window.timezone"),
        ({"time_window": {"timezone": ""}}, "time_window.timezone"),
        ({"time_window": {"timezone": "../../etc/passwd"}}, "time_window.timezone"),
        ({"time_window": {"timezone": 5}}, "time_window.timezone"),
    ],
)
def test_each_bad_input_names_its_field(fields, key):
    assert key in errors_for(**fields)


@pytest.mark.parametrize(
    "pattern",
    ["(a+)+$", "(.*)*x", "(a*)*", "(?:a+)+b", "(a+){2,}", r"(\w+\s?)+$", "(a)\\1", "(?P<x>a)(?P=x)"],
)
def test_it_refuses_regexes_that_could_backtrack_catastrophically(pattern):
    fields = errors_for(conditions=[{"arg": "a", "op": "regex", "value": pattern}])
    assert "backtrack" in fields["conditions[0].value"][0]


@pytest.mark.parametrize("pattern", [r"^/srv/\w+$", "a+b*", "(ab)+", "(a|b)c", r"\d{3}-\d{4}", "x(?=y)"])
def test_it_accepts_ordinary_regexes(pattern):
    assert check_regex(pattern) is None


@pytest.mark.parametrize("pattern", ["((a+))+$", "(a|a)*$"])
def test_it_refuses_catastrophic_regexes_hidden_one_level_deeper(pattern):
    assert check_regex(pattern) is not None


@pytest.mark.parametrize("fields", [{"servers": [{"a": 1}]}, {"roles": [["ops"]]}, {"actions": [{}]}])
def test_an_unhashable_list_item_is_a_field_error(fields):
    assert list(errors_for(**fields)) == [next(iter(fields))]


def test_it_reports_every_problem_at_once():
    fields = errors_for(
        effect="maybe",
        servers=["fs-["],
        conditions=[{"arg": "a", "op": "regex", "value": "(a+)+$"}],
        time_window={"timezone": "Nowhere/Nothing"},
        colour="red",
    )
    assert set(fields) == {"effect", "servers", "conditions[0].value", "time_window.timezone", "colour"}


def test_a_body_that_is_not_an_object_is_refused():
    with pytest.raises(InvalidInput):
        validate_policy(["name", "effect"])


def test_a_role_and_an_agent_that_exist_are_accepted_by_name_and_id():
    RoleFactory(name="ops")
    agent = AgentFactory()
    cleaned = validate_policy(BASE | {"roles": ["ops"], "agents": [agent.pk]})
    assert (cleaned["roles"], cleaned["agents"]) == (["ops"], [agent.pk])
    fields = errors_for(roles=["ops", "ghosts"], agents=[agent.pk, agent.pk + 1000])
    assert fields == {"roles": ["Unknown role(s): ghosts."], "agents": [f"Unknown agent id(s): {agent.pk + 1000}."]}


def test_partial_merges_the_existing_rule_and_checks_only_the_new_keys_for_unknowns():
    existing = validate_policy(BASE | {"servers": ["fs"], "priority": 5})
    patched = validate_policy({"priority": 9}, partial=True, existing=existing)
    assert (patched["name"], patched["servers"], patched["priority"]) == ("read only", ["fs"], 9)
    with pytest.raises(InvalidInput) as exc:
        validate_policy({"effect": "nope"}, partial=True, existing=existing)
    assert list(exc.value.fields) == ["effect"]


def test_without_partial_a_missing_name_and_effect_are_required():
    with pytest.raises(InvalidInput) as exc:
        validate_policy({})
    assert set(exc.value.fields) == {"name", "effect"}
