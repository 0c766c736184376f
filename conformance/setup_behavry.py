"""Seed a throwaway Behavry state for the conformance run and print the agent token.

Run from the repository root with DJANGO_SETTINGS_MODULE=behavry.settings, BEHAVRY_VAR_DIR set to a
temporary folder and DATABASE_URL/REDIS_URL unset (the embedded SQLite default), after `migrate`:

    .venv/bin/python conformance/setup_behavry.py http://127.0.0.1:<port>/mcp

It registers the upstream as slug "everything", creates one agent with a token, and one allow-all
policy, all through the same services the API and admin use (so each change is audited as usual).
The only output on stdout is the raw agent token.
"""

from __future__ import annotations

import sys
from pathlib import Path

import django


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: setup_behavry.py <upstream MCP URL>")
    upstream_url = sys.argv[1]
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    django.setup()

    from agents.services import agent_create, agent_token_issue
    from behavry.actors import SYSTEM
    from policies.services import policy_create
    from proxy.services import upstream_server_create

    upstream_server_create(slug="everything", name="server-everything (conformance)", url=upstream_url, by=SYSTEM)
    agent = agent_create(name="conformance", description="MCP conformance suite", by=SYSTEM)
    _token, raw = agent_token_issue(agent=agent, label="conformance", by=SYSTEM)
    policy_create(data={"name": "allow all", "effect": "allow"}, by=SYSTEM)
    sys.stdout.write(raw + "\n")


if __name__ == "__main__":
    main()
