from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from accounts.models import ApiKey
from accounts.selectors import api_key_authenticate
from agents.models import Agent
from agents.selectors import agent_token_authenticate

pytestmark = pytest.mark.django_db


def run(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_create_api_key_prints_only_a_working_key():
    output = run("create_api_key", "--name", "siem", "--role", "admin")
    assert output.count("\n") == 1
    key = api_key_authenticate(output.strip())
    assert key is not None and key.role == "admin" and key.name == "siem"


def test_create_api_key_refuses_an_unknown_role():
    with pytest.raises(CommandError):
        run("create_api_key", "--name", "x", "--role", "root")
    assert not ApiKey.objects.exists()


def test_create_agent_prints_the_id_and_a_working_token():
    output = run("create_agent", "builder", "--role", "ci", "--role", "readers")
    lines = dict(line.split("=", 1) for line in output.strip().splitlines())
    agent = Agent.objects.get(pk=int(lines["agent_id"]))
    assert agent.name == "builder"
    assert sorted(r.name for r in agent.roles.all()) == ["ci", "readers"]
    assert agent_token_authenticate(lines["token"]).agent == agent


def test_create_agent_refuses_a_duplicate_name_and_creates_nothing_more():
    run("create_agent", "builder")
    with pytest.raises(CommandError, match="already exists"):
        run("create_agent", "builder", "--role", "new-role")
    assert Agent.objects.count() == 1


def test_demo_is_idempotent_and_issues_fresh_tokens(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    first = run("demo", "--upstream-port", "9911")
    second = run("demo", "--upstream-port", "9911")
    assert "http://127.0.0.1:9911/mcp" in first
    assert Agent.objects.count() == 2

    def tokens(text):
        return {line.split()[1]: line.split()[-1] for line in text.splitlines() if line.startswith("agent ")}

    old, new = tokens(first), tokens(second)
    assert old.keys() == new.keys() == {"research-bot:", "ops-bot:"}
    for name in old:
        assert agent_token_authenticate(old[name]) is None  # revoked by the second run
        assert agent_token_authenticate(new[name]) is not None
    # the admin login stays the same across runs
    assert first.splitlines()[-1] == second.splitlines()[-1]
