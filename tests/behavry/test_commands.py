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


@pytest.mark.parametrize("server", ["uvicorn", "daphne"])
def test_run_embedded_serves_http_and_the_mcp_endpoint_with_either_asgi_server(server, tmp_path):
    """The web process `make run` starts (BEHAVRY_ASGI_SERVER): health, and the MCP route asking
    for a token, which only Channels' router under that server can answer."""
    import os
    import subprocess
    import time

    import httpx

    from behavry.asgi_server import asgi_server_command
    from tests.conftest import ROOT, free_port

    port = free_port()
    env = {**os.environ, "BEHAVRY_VAR_DIR": str(tmp_path)}
    env.pop("DATABASE_URL", None)  # neither answer below touches the database
    proc = subprocess.Popen(
        asgi_server_command(server, port), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline, health = time.monotonic() + 30, None
        while health is None and time.monotonic() < deadline:
            try:
                health = httpx.get(f"{url}/healthz", timeout=1)
            except httpx.HTTPError:
                time.sleep(0.2)
        if health is None:
            proc.kill()
            pytest.fail(f"{server} did not start: {proc.stderr.read().decode()[-2000:]}")
        assert health.status_code == 200
        denied = httpx.post(f"{url}/mcp/anything", json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, timeout=5)
        assert denied.status_code == 401
        assert denied.headers["www-authenticate"].startswith("Bearer")
        assert "uvicorn" not in denied.headers.get("server", "")
    finally:
        proc.terminate()
        proc.wait(10)
