"""Demo data for `make run`: one upstream, agent roles, starter policies, agents with tokens, a console admin.

Idempotent: running it again keeps existing rows, issues a fresh token for the demo agents (the
old demo tokens are revoked, since raw tokens cannot be shown twice) and keeps the admin password.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction

from accounts.roles import PersonRole
from agents.models import Agent, AgentToken
from agents.services import agent_create, agent_token_issue, agent_token_revoke, role_create
from behavry.actors import Actor
from policies.models import Policy
from policies.services import policy_create
from proxy.models import UpstreamServer
from proxy.services import upstream_server_create, upstream_server_update

DEMO = Actor(kind="system", id="demo", name="manage.py demo")
DEMO_TOKEN_LABEL = "demo"
ADMIN_USERNAME = "admin"

DEMO_AGENTS: list[dict[str, Any]] = [
    {
        "name": "research-bot",
        "description": "Reads documents and summarizes them.",
        "owner": "research-team",
        "roles": ["readers"],
    },
    {
        "name": "ops-bot",
        "description": "Maintains the workspace; may change and delete files with approval.",
        "owner": "platform-team",
        "roles": ["readers", "operators"],
    },
]


# Starter policies: reads pass, changes need a human, everything else falls to default deny.
STARTER_POLICIES = [
    {
        "name": "Read-only tools are allowed",
        "effect": "allow",
        "actions": ["read"],
        "priority": 100,
        "reason": "Reading is low risk.",
    },
    {
        "name": "Demo utilities are allowed",
        "effect": "allow",
        "servers": ["demo"],
        "tools": ["echo", "slow_task", "fail", "ask_user", "ping_client"],
        "priority": 100,
        "reason": "Harmless demo tools.",
    },
    {
        "name": "Changes need approval",
        "effect": "escalate",
        "actions": ["write", "delete", "send", "execute"],
        "roles": ["operators"],
        "priority": 200,
        "reason": "Writing, deleting, sending and executing need a human's approval.",
    },
]


@dataclass
class DemoResult:
    admin_username: str
    admin_password: str
    tokens: dict[str, str] = field(default_factory=dict)
    server_url: str = ""


def _admin_password() -> str:
    path = Path(settings.VAR_DIR) / "demo-admin-password"
    if path.exists():
        return path.read_text().strip()
    password = secrets.token_urlsafe(12)
    path.write_text(password + "\n")
    path.chmod(0o600)
    return password


@transaction.atomic
def demo_load(*, upstream_port: int | None = None) -> DemoResult:
    port = upstream_port or settings.BEHAVRY_DEMO_UPSTREAM_PORT
    url = f"http://127.0.0.1:{port}/mcp"
    server = UpstreamServer.objects.filter(slug="demo").first()
    if server is None:
        server = upstream_server_create(slug="demo", name="Demo workspace (built-in)", url=url, by=DEMO)
    elif server.url != url:
        upstream_server_update(server=server, url=url, by=DEMO)

    role_create(name="readers", description="May read the demo workspace.", by=DEMO)
    role_create(name="operators", description="May change the workspace, with approval.", by=DEMO)

    for body in STARTER_POLICIES:
        if not Policy.objects.filter(name=body["name"]).exists():
            policy_create(data=body, by=DEMO)

    result = DemoResult(admin_username=ADMIN_USERNAME, admin_password=_admin_password(), server_url=url)
    for spec in DEMO_AGENTS:
        agent = Agent.objects.filter(name=spec["name"]).first() or agent_create(by=DEMO, **spec)
        for old in AgentToken.objects.filter(agent=agent, label=DEMO_TOKEN_LABEL, revoked_at__isnull=True):
            agent_token_revoke(token=old, by=DEMO)
        _token, raw = agent_token_issue(agent=agent, label=DEMO_TOKEN_LABEL, by=DEMO)
        result.tokens[agent.name] = raw

    User = get_user_model()
    user = User.objects.filter(username=ADMIN_USERNAME).first()
    if user is None:
        user = User.objects.create_user(ADMIN_USERNAME, password=result.admin_password, is_staff=True)
    elif not user.check_password(result.admin_password):
        user.set_password(result.admin_password)
        user.save(update_fields=["password"])
    user.groups.add(Group.objects.get_or_create(name=PersonRole.ADMIN)[0])
    return result
